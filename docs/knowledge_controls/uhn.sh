#!/usr/bin/env bash
# LAMA-UHN rescoring of experiment=knowledge_controls (seed 34): the same prompts, scored only on
# the test facts that survive the UHN filter (task.subset=uhn). Nothing trains: MP and the prior
# need no training, the three P-Tuning rows load the prompts the sweep exported (the two
# controls on their own re-initialised backbone, which backbone.control and seed rebuild).
set -euo pipefail
relations='task.relation=[P1376,P37,P108,P140,P36,P127,P178,P463,P138,P101]'
out=${1:-logs/knowledge_controls_uhn}
sweep=logs/knowledge_controls
common=("$relations" task.subset=uhn logger=none)
ptl-eval "${common[@]}" prompt=manual hydra.run.dir="$out/manual"
ptl-eval "${common[@]}" prompt=prior hydra.run.dir="$out/prior"
for row in ptuning ptuning_rand_e ptuning_rand_m; do
  control=null
  case $row in ptuning_rand_e) control=rand_e ;; ptuning_rand_m) control=rand_m ;; esac
  ptl-eval "${common[@]}" prompt=exported "prompt.path='$sweep/knowledge_row=$row'" \
    backbone.control=$control hydra.run.dir="$out/$row"
done
