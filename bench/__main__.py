"""`python -m bench`: the peer comparison (bench/peers.py); the other benchmarks are `python -m bench.<name>`."""

from bench.peers import main

main()
