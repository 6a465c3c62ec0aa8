"""The offline synthetic multimodal suite: InternVL's data formats on tiny, checkable tasks.

Each task isolates one capability the InternVL 2.5 report cares about (DESIGN section 5):

| task | module | capability |
|---|---|---|
| ``caption`` | ``scenes`` | basic perception (stage 1 alignment) |
| ``shape_qa`` | ``scenes`` | count / colour / position questions |
| ``small_text`` | ``small_text`` | high resolution: dynamic tiling versus one tile |
| ``chart`` | ``charts`` | reading bar / line charts and forms |
| ``grounding`` | ``scenes`` | ``<ref>``/``<box>`` answers in 0-1000 coordinates |
| ``multi_image`` | ``multi_image`` | ``Image-k`` numbering, tile budgets |
| ``video`` | ``video`` | frame sequences, one tile per frame |
| ``reasoning`` | ``reasoning`` | multi-step multiple choice, CoT and direct |
| ``text_only`` | ``text_only`` | keeping the LLM's language skills |
| ``faulty`` | ``faulty`` | labelled bad samples for the filtering chapter |

Every record keeps the facts behind its answer under ``"meta"`` (ignored by training), so tests
and readers can check each answer against the picture.

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

from minivl.data.synthetic.browse import show_samples
from minivl.data.synthetic.common import CELL_NAMES, COLOURS, PALETTE, SHAPES, box_to_1000, sample_rng
from minivl.data.synthetic.faulty import CONTENT_FAULTS, FAULT_RATE, FAULT_TYPES, corrupt
from minivl.data.synthetic.suite import (
    SPLITS,
    TASKS,
    ensure_suite,
    format_summary,
    generate_suite,
    generate_task,
    main,
    split_size,
    synth_command,
)

__all__ = [
    "CELL_NAMES",
    "COLOURS",
    "CONTENT_FAULTS",
    "FAULT_RATE",
    "FAULT_TYPES",
    "PALETTE",
    "SHAPES",
    "SPLITS",
    "TASKS",
    "box_to_1000",
    "corrupt",
    "ensure_suite",
    "format_summary",
    "generate_suite",
    "generate_task",
    "main",
    "sample_rng",
    "show_samples",
    "split_size",
    "synth_command",
]
