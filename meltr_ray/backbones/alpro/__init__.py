"""ALPRO (Li et al., CVPR 2022): TimeSformer video encoder, BERT text and multimodal encoders, four pretext losses.

``model.py`` the network, ``timesformer.py`` the divided space-time video encoder, ``tasks.py`` the QA loss,
the pretext losses (VTC, VTM with hard negatives, MLM, PEM from a batch column) and QA evaluation,
``checkpoint.py`` the checkpoint key layout targeted and its filter, ``spec.py`` the specs and the registered
variants (``alpro_base``, ``alpro_tiny``).
"""
from . import spec  # noqa: F401  (registers the variants)
