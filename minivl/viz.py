"""Small figures shared by several chapters (matplotlib only)."""

from __future__ import annotations


def architecture_figure(num_tiles: int = 3, tokens_per_tile: int = 256):
    """Draw InternVL's ViT-MLP-LLM pipeline: tiles -> InternViT -> pixel unshuffle -> MLP -> LLM.

    Returns the matplotlib figure. Explained in chapter 0 (notebooks/00_introduction.ipynb).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(11, 3.2))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 3.2)
    ax.axis("off")
    boxes = [
        (0.2, f"image\n-> {num_tiles} tiles\n(+ thumbnail)", "#f2f2f2"),
        (2.3, "InternViT\n(1024 patches\nper 448 tile)", "#cfe2f3"),
        (4.4, "pixel unshuffle\n2x2 -> 1\n(1024 -> 256)", "#d9ead3"),
        (6.5, "MLP projector\nLN, Linear,\nGELU, Linear", "#fff2cc"),
        (8.6, "LLM\n(Qwen2.5 /\nInternLM2.5)", "#f4cccc"),
    ]
    for x, text, colour in boxes:
        ax.add_patch(FancyBboxPatch((x, 1.0), 1.8, 1.4, boxstyle="round,pad=0.05", fc=colour, ec="#444"))
        ax.text(x + 0.9, 1.7, text, ha="center", va="center", fontsize=9)
    for (x0, *_), (x1, *_) in zip(boxes, boxes[1:]):
        ax.add_patch(FancyArrowPatch((x0 + 1.85, 1.7), (x1 - 0.05, 1.7), arrowstyle="-|>", mutation_scale=14))
    ax.text(5.5, 0.45, f"each tile becomes {tokens_per_tile} <IMG_CONTEXT> embeddings in the LLM's input; "
            "text tokens around them come from the chat template", ha="center", fontsize=9, style="italic")
    ax.text(5.5, 2.85, "ViT-MLP-LLM", ha="center", fontsize=12, weight="bold")
    fig.tight_layout()
    return fig
