"""Evaluation metrics, computed as the field defines them (CLIP_benchmark, Winoground, MMVP-VLM).

Each module works on embeddings or similarity matrices, so any model with ``encode_image`` /
``encode_text`` can be scored. Tie rules are fixed and documented per task.
"""
