"""Training: packed attention, loss reweighting, stage recipes and the training loop.

Each module is imported on its own (``from minivl.train.loss import len2weight``); this
package file stays empty so that importing one module never pulls in the others.
"""
