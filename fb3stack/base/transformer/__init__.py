"""Transformer fine-tuning member: any Hugging Face encoder + pooler + linear head, trained fold by fold."""
