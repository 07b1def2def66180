"""sailflow: URL tables to aligned vision-language models (SAIL, LLaVA) as one Snakemake DAG."""

__version__ = "0.1.0"
