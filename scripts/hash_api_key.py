"""Print the SHA-256 digest of an API key for serve_config.yaml's `auth.api_keys` / `admin_keys`.

    python scripts/hash_api_key.py            # reads the key from stdin (keeps it out of shell history)
    python scripts/hash_api_key.py --new      # makes a new random key, prints it and its digest
"""

import secrets
import sys

from deployments.auth import hash_key


def main() -> None:
    if "--new" in sys.argv[1:]:
        key = "sk-raygate-" + secrets.token_urlsafe(32)
        print(f"key:    {key}\nsha256: {hash_key(key)}")
        return
    key = sys.stdin.readline().strip()
    if not key:
        sys.exit("no key on stdin")
    print(hash_key(key))


if __name__ == "__main__":
    main()
