#!/usr/bin/env bash
# The main job on two machines with 8 GPUs each (16 processes), launched by torchrun on each machine.
# Set MASTER_ADDR to node 0's address (reachable from node 1) and NODE_RANK to 0 on the first machine, 1 on the
# second; run the same command on both, from the repository root, with the same code, config and data paths.
# The global batch is nnodes x nproc_per_node x per_device_train_batch_size: scale max_steps or the batch to keep
# the budget (examples/cs224n/main.yaml's 1,400 x 32 examples on one process).
set -euo pipefail
: "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}" "${NODE_RANK:?set NODE_RANK to 0 or 1}"
torchrun --nnodes 2 --nproc_per_node 8 --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port 29500 \
    -m hf_multitask.cli train examples/cs224n/main.yaml --use_cpu false --bf16 true \
    --per_device_train_batch_size 2 --ddp_timeout 600 --output_dir runs/main-2x8
