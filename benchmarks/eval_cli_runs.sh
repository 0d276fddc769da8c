#!/bin/bash
# the evaluation runs of BENCHMARKS.md's judged-evals section; each command and its output, in order
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
D=${1:-runs/evals26-bench}; mkdir -p "$D"
run() { echo; echo "\$ $*"; /usr/bin/time -f "(wall %e s)" nice -n 5 "$@" 2>&1 | grep -v "it/s\]\|batch/s\]\|s/it\]" ; }
uptime
.venv/bin/python -c "import sys; sys.path.insert(0, 'benchmarks'); from _machine import machine_markdown; print(machine_markdown())"
run .venv/bin/danlu eval runs/tiny-cpu/model --tasks arc_easy,piqa,hellaswag --num-fewshot 5 --limit 100 --out $D/fewshot_tiny.json
run .venv/bin/danlu eval runs/tiny-cpu/sft/model --tasks mtbench,alpacaeval --judge runs/smollm2 --max-new-tokens 96 --out $D/judged_sft.json
run .venv/bin/danlu eval runs/tiny-cpu/model --tasks mtbench,alpacaeval --judge runs/smollm2 --max-new-tokens 96 --out $D/judged_base.json
run .venv/bin/danlu eval runs/smollm2 --tasks mtbench,alpacaeval --judge runs/smollm2 --max-new-tokens 96 --out $D/judged_smollm2.json
run .venv/bin/danlu leaderboard runs/smollm2 runs/tiny-cpu/sft/model runs/tiny-cpu/model --judge runs/smollm2 --with-reference --max-new-tokens 96 --out $D/leaderboard.json
run .venv/bin/danlu eval runs/tiny-cpu/model --tasks gsm8k,nq_open --limit 32 --max-new-tokens 64 --batch-size 1 --out $D/gen_seq.json
run .venv/bin/danlu eval runs/tiny-cpu/model --tasks gsm8k,nq_open --limit 32 --max-new-tokens 64 --batch-size 16 --out $D/gen_batched.json
run .venv/bin/danlu eval runs/smollm2 --tasks arc_easy,piqa --num-fewshot 5 --limit 100 --out $D/fewshot_smollm2.json
run .venv/bin/danlu eval runs/tiny-cpu/model --tasks gsm8k,nq_open --max-new-tokens 64 --out $D/gen_full_tiny.json
run .venv/bin/danlu eval runs/smollm2 --tasks gsm8k,nq_open --limit 40 --max-new-tokens 128 --out $D/gen_smollm2.json
uptime
