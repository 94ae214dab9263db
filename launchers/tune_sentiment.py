#!/usr/bin/env python
"""Tune MELTR for multimodal sentiment analysis on Ray (UniVL on CMU-MOSI feature shards), ranked by binary
accuracy (Acc-2) on val.

    ray submit --tmux cluster.yaml launchers/tune_sentiment.py -- \\
        --data s3://BUCKET/cmu_mosi_shards --vocab /home/ubuntu/bert-base-uncased-vocab.txt \\
        --pretrained /home/ubuntu/univl.pretrained.bin --storage s3://BUCKET/meltr_results
The sentiment loss is primary; --recipe univl_cmu_mosi_align makes L_Align primary (the supplementary's choice).
On CPU with the synthetic feature dataset (meltr_ray.data.synthetic_features):
    python launchers/tune_sentiment.py --recipe univl_demo_sentiment --data SHARDS --vocab SHARDS/vocab.txt
"""
import sys

from meltr_ray.launch import tune_main

if __name__ == "__main__":
    if "--data" not in sys.argv and "--restore" not in sys.argv:
        sys.exit("tune_sentiment.py needs --data (shards from `meltr-ray ingest --format cmu-mosi ...`); "
                 "the embedded demo is launchers/tune_retrieval.py")
    sys.exit(tune_main("sentiment", description=__doc__.split("\n\n")[0]))
