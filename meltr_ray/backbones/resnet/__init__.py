"""The CIFAR ResNet family (He et al. 2016): the image-only setting of the MELTR supplementary (§H, Table 3).

``model.py`` the network, ``tasks.py`` its losses (cross-entropy primary; mixup and rotation auxiliaries) and
evaluation, ``checkpoint.py`` the checkpoint filter, ``spec.py`` the specs and the registered variants
(``resnet32``, ``resnet_digits``, ``resnet_tiny``).
"""
from . import spec  # noqa: F401  (registers the variants)
