"""UniVL (Luo et al. 2020): the backbone of MELTR's YouCook2 / MSRVTT retrieval and captioning and CMU-MOSI
sentiment results, with its eight losses.

``config.py`` sizes, variants and each task's losses; ``layers.py`` the visual/cross encoders, decoder and
heads; ``model.py`` the network; ``masking.py`` CMLM/CMFM masking; ``tasks.py`` the losses; ``decoding.py``
beam search and greedy decoding; ``evaluation.py`` retrieval/captioning/sentiment evaluation;
``checkpoint.py`` the official-checkpoint filter; ``spec.py`` the specs and the registered variants
(``univl_base``, ``univl_tiny``).
"""
from . import spec  # noqa: F401  (registers the variants)
