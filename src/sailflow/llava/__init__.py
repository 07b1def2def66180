"""LLaVA-style two-stage training (stage 1: the connector; stage 2: visual instruction tuning).

    templates    conversation templates (plain, v1 = vicuna_v1, the tokenizer's chat template):
                 input_ids with the image sentinel, label masking, truncation
    data         LLaVA JSON/JSONL records and records from our own datasets, the training dataset,
                 the collator, the modality-length grouped sampler
    towers       vision towers (a backbone, or a SAIL align run's vision head on its tokens)
    connectors   the projector from image tokens to the LLM's embeddings
    model        the assembled model (vision tower, projector, language model), splicing images in
    train        the two training stages on transformers' Trainer (+ DeepSpeed ZeRO)
    remgcl       REMGCL's auxiliary loss (answer <-> image, OCR text <-> its patches), a stage setting
    tiny         tiny tokenizers and LLMs built locally for the tests and the demo
    export       export to transformers' LlavaForConditionalGeneration
"""
