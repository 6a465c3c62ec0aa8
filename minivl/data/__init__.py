"""Data: InternVL's record formats and the offline synthetic suite.

* :mod:`minivl.data.records`: the meta JSON and JSONL conversation records;
* :mod:`minivl.data.synthetic`: the seeded synthetic multimodal suite.

Explained in chapter 6 (notebooks/06_data.ipynb).
"""
