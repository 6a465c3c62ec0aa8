"""Write configs/<model>/<stage>.yaml from the presets in minivl.train.stages.

Run after changing a preset: `python scripts/make_configs.py`. tests/test_stages.py fails when
a YAML file and its preset disagree.
"""

from pathlib import Path

import yaml

from minivl.train.stages import get_stage

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # directory: (preset size, released checkpoint, stages)
    "tiny": ("tiny", None, ["stage1", "stage1_5", "stage2", "finetune_full", "finetune_lora"]),
    "internvl2_5_1b": ("1b", "OpenGVLab/InternVL2_5-1B", ["stage1", "stage2", "finetune_full", "finetune_lora"]),
    "internvl2_5_2b": ("2b", "OpenGVLab/InternVL2_5-2B", ["stage1", "stage2", "finetune_full", "finetune_lora"]),
    "internvl2_5_8b": ("8b", "OpenGVLab/InternVL2_5-8B",
                       ["stage1", "stage1_5", "stage2", "finetune_full", "finetune_lora"]),
}


def main() -> None:
    for d, (size, ckpt, stages) in MODELS.items():
        (ROOT / "configs" / d).mkdir(parents=True, exist_ok=True)
        prev = None
        for st in stages:
            cfg = get_stage(st, size)
            if st == "stage1":
                model = d  # a MiniVLConfig preset: pretrained ViT and LLM, random projector
            elif st.startswith("stage"):
                model = f"runs/{d}/{prev}/final"
            else:
                model = "runs/tiny/stage2/final" if ckpt is None else ckpt
            if st.startswith("stage"):
                prev = st
            data = "runs/quickstart/data/train.json" if ckpt is None else "data/my_meta.json"
            header = (f"# {st} for {d}; the values of minivl.train.stages.get_stage({st!r}, {size!r})\n"
                      f"# (tests/test_stages.py checks that the two agree). Run: minivl train configs/{d}/{st}.yaml\n")
            if ckpt is not None:
                header += ("# Multi-GPU: accelerate launch --config_file configs/accelerate/zero1.yaml "
                           "-m minivl train <this file>\n")
            body = {"model": model, "data": data, "output_dir": f"runs/{d}/{st}"}
            if ckpt is None and st == "stage1":  # a preset model needs a tokenizer: the quickstart's
                body["tokenizer"] = "runs/quickstart/tokenizer"
            body["stage"] = cfg.to_dict()
            (ROOT / "configs" / d / f"{st}.yaml").write_text(header + yaml.safe_dump(body, sort_keys=False))


if __name__ == "__main__":
    main()
