"""Run by tests/test_trainer.py under `accelerate launch` (2 CPU processes, gloo) or alone.

Usage: python _ddp_train_worker.py SUITE_META TOKENIZER_DIR OUT_FILE PER_RANK_BATCH
Trains the smoke MiniVL for 3 stage-2 steps and writes the final weights and losses.
"""

import functools
import sys

import torch
from accelerate import Accelerator

from minivl.config import MiniVLConfig
from minivl.data.dataset import DataConfig, MixtureDataset, build_datasets
from minivl.data.packing import padded_collate_fn
from minivl.model import MiniVL
from minivl.text.tokenizer import image_token_id, load_tokenizer
from minivl.train.stages import get_stage
from minivl.train.trainer import map_loader, train

meta, tok_dir, out_file, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
tok = load_tokenizer(tok_dir)
model = MiniVL(MiniVLConfig.smoke(vocab_size=len(tok), image_token_id=image_token_id(tok)))
data = MixtureDataset(build_datasets(meta, tok, DataConfig(image_size=112, num_image_token=16, max_dynamic_patch=2,
                                                           max_length=1024, min_num_frame=2, max_num_frame=2),
                                     train=False, names=["shape_qa", "caption", "chart"]))
accelerator = Accelerator(cpu=True)
stage = get_stage("stage2", "tiny", max_steps=3, packing=False, batch_size=batch, drop_path_rate=0.0,
                  warmup_ratio=0.0, warmup_steps=1)
collate = functools.partial(padded_collate_fn, pad_token_id=tok.pad_token_id, loss_reduction="square")
result = train(model, map_loader(data, batch, collate, seed=0), stage, progress=False, accelerator=accelerator)
if accelerator.is_main_process:
    state = {k: v.detach().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    torch.save({"state": state, "world": accelerator.num_processes}, out_file)
