"""Violet (Fu et al. 2021): Video Swin + BERT cross encoder, the headline backbone of the MELTR paper.

``model.py`` the network, ``tasks.py`` its task losses and evaluation, ``masking.py`` MTM/MVM masking,
``video_swin.py`` the video encoder, ``checkpoint.py`` the official-checkpoint filter, ``spec.py`` the specs
and the registered variants (``violet_base``, ``violet_tiny``).
"""
from . import spec  # noqa: F401  (registers the variants)
