#!/bin/bash
# Time from `serve run serve_config.yaml` to the README's first curl answer (model already converted).
cd /work/bench-wt
/work/main/.venv/bin/ray stop --force >/dev/null 2>&1
t0=$(date +%s.%N)
setsid .venv/bin/serve run serve_config.yaml > /tmp/first_start.log 2>&1 &
pid=$!
while true; do
  out=$(curl -s -m 60 http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":32,"temperature":0}' 2>/dev/null)
  if echo "$out" | grep -q '"choices"'; then break; fi
  sleep 1
done
t1=$(date +%s.%N)
echo "first answer after $(echo "$t1 - $t0" | bc) s: $out"
kill -INT -- -$pid; sleep 8; /work/main/.venv/bin/ray stop --force >/dev/null 2>&1
