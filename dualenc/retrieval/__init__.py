"""Retrieval evaluation: the one engine shared by train-time eval and `dualenc.evaluate`.

`engine` encodes and searches a BEIR split, `evaluate` runs a configured system (dense, BM25,
hybrid, reranked) and writes its outputs, `report` / `pipeline_report` summarise runs, `search`
serves a saved index, and `eval_config` holds the default eval config. Commands live at the
package top.
"""
