#!/usr/bin/env python
"""Tune MELTR for video captioning on Ray (UniVL on YouCook2 / MSRVTT feature shards), ranked by CIDEr on val.

    ray submit --tmux cluster.yaml launchers/tune_captioning.py -- \\
        --data s3://BUCKET/youcook2_shards --vocab /home/ubuntu/bert-base-uncased-vocab.txt \\
        --pretrained /home/ubuntu/univl.pretrained.bin --storage s3://BUCKET/meltr_results
Supplementary Table 4 rows: --recipe univl_youcook2_captioning_ori (…_ori_mdecoder, …_ori_all3, …_mtl).
On CPU with the synthetic feature dataset (meltr_ray.data.synthetic_features):
    python launchers/tune_captioning.py --recipe univl_demo_captioning --data SHARDS --vocab SHARDS/vocab.txt
"""
import sys

from meltr_ray.launch import tune_main

if __name__ == "__main__":
    if "--data" not in sys.argv and "--restore" not in sys.argv:
        sys.exit("tune_captioning.py needs --data (shards from `meltr-ray ingest --format youcook2 ...`); "
                 "the embedded demo is launchers/tune_retrieval.py")
    sys.exit(tune_main("captioning", description=__doc__.split("\n\n")[0]))
