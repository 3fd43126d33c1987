"""FSDP2 on CPUs (gloo) for notebook 03's Yoda LoRA recipe: shard bytes per rank and the losses.

accelerate does not shard on a CPU: with ``distributed_type: FSDP`` and ``use_cpu`` it runs plain
data parallel (``MULTI_CPU``), and without ``use_cpu`` every process trains alone. So this script
builds the recipe's ``SFTTrainer`` (``yoda.yoda_sft_config``, ``yoda.yoda_lora_config``) for its data
set, collator, loss, optimizer and scheduler, applies ``torch.distributed.fsdp.fully_shard`` to
each decoder layer and the root itself, and runs the Trainer's step by hand:

    torchrun --nproc_per_node 2 tests/fsdp_cpu_check.py --model MODEL_DIR --data DATA_DIR --out fsdp.json

``--out`` gets, from rank 0: the logged loss of each step (the Trainer's: the sum of the token
losses over the global batch / its completion tokens) and, per rank, the bytes of its local
parameter shards (frozen base weights and trainable LoRA weights apart) and of its optimizer
states after the first step, with the unsharded totals. tests/test_multi_gpu.py runs it.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model folder or hub id (see course_utils.launch)")
    parser.add_argument("--data", required=True, help="folder with train.jsonl (python -m course_utils.launch prepare-data)")
    parser.add_argument("--out", required=True, help="JSON file written by rank 0")
    parser.add_argument("--max_steps", type=int, default=4)
    parser.add_argument("--per_device_train_batch_size", type=int, default=2)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--lora_dropout", type=float, default=0.0,
                        help="0 by default: dropout masks depend on each process's RNG, so they differ from one process's")
    return parser.parse_args(argv)


def tensor_bytes(t) -> int:
    from torch.distributed.tensor import DTensor

    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def global_bytes(t) -> int:
    return t.numel() * t.element_size()  # a DTensor's numel() is the unsharded one


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import torch.distributed as dist
    from datasets import load_dataset
    from torch.distributed.fsdp import fully_shard
    from trl import SFTTrainer

    from course_utils import yoda

    t0 = time.time()
    config = yoda.yoda_sft_config(
        tempfile.mkdtemp(prefix="fsdp-check-"), per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, max_steps=args.max_steps,
        max_length=args.max_length, warmup_steps=0, logging_steps=1, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, model_init_kwargs={"dtype": "float32"})
    train = load_dataset("json", data_files=f"{args.data}/train.jsonl", split="train")
    trainer = SFTTrainer(model=args.model, args=config, train_dataset=train,
                         peft_config=yoda.yoda_lora_config(lora_dropout=args.lora_dropout))
    world, rank = trainer.accelerator.num_processes, trainer.accelerator.process_index
    if not dist.is_initialized() or dist.get_world_size() != world:
        raise SystemExit("Launch with torchrun --nproc_per_node N (or accelerate launch --multi_gpu).")

    model = trainer.model  # the PeftModel, not wrapped yet (Trainer.train would wrap it in DDP)
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)

    def shard_bytes(trainable: bool):
        params = [p for p in model.parameters() if p.requires_grad == trainable]
        return {"local": sum(tensor_bytes(p) for p in params), "total": sum(global_bytes(p) for p in params),
                "count": len(params),
                # the most one rank can hold beyond an even split: a dim-0 row of the largest param
                "max_row": max(global_bytes(p) // p.shape[0] for p in params)}

    frozen, trainable = shard_bytes(False), shard_bytes(True)

    optimizer = trainer.create_optimizer()  # the Trainer's own (AdamW, lr 2e-4), over the sharded params
    scheduler = trainer.create_scheduler(num_training_steps=args.max_steps, optimizer=optimizer)
    loader = iter(trainer.get_train_dataloader())  # accelerate's shard: batch i -> rank i % world
    model.train()
    losses, grad_norms, optim_bytes = [], [], None
    for _step in range(args.max_steps):
        batches = [trainer._prepare_inputs(next(loader)) for _ in range(args.gradient_accumulation_steps)]
        # as Trainer._get_num_items_in_batch: completion tokens (shifted labels) of the global batch
        n_items = sum(b["labels"][..., 1:].ne(-100).sum() for b in batches)
        dist.all_reduce(n_items)
        step_loss = torch.zeros(())
        for batch in batches:
            loss = trainer.compute_loss(model, batch, num_items_in_batch=n_items)  # x world, as the Trainer
            loss.backward()
            step_loss += loss.detach()
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                              config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        dist.all_reduce(step_loss)  # the Trainer logs the mean over ranks of each rank's sum
        losses.append(step_loss.item() / world)
        grad_norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
        if optim_bytes is None:
            states = [t for s in optimizer.state.values() for t in s.values()
                      if torch.is_tensor(t) and t.dim() > 0]  # exp_avg, exp_avg_sq (not the step counter)
            optim_bytes = {"local": sum(tensor_bytes(t) for t in states),
                           "total": sum(global_bytes(t) for t in states), "count": len(states)}

    from torch.distributed.tensor import DTensor

    per_rank = {"rank": rank, "frozen_params": frozen, "trainable_params": trainable, "optimizer_states": optim_bytes,
                "all_params_dtensor": all(isinstance(p, DTensor) for p in model.parameters())}
    gathered = [None] * world
    dist.all_gather_object(gathered, per_rank)
    if rank == 0:
        with open(args.out, "w") as fh:
            json.dump({"world_size": world, "distributed_type": str(trainer.accelerator.distributed_type),
                       "backend": dist.get_backend(), "losses": losses, "grad_norms": grad_norms,
                       "ranks": gathered, "seconds": time.time() - t0}, fh, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
