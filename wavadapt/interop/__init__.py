"""Other libraries' fine-tuned models: transformers CTC directories (:mod:`.hf`), MMS's adapter layout (:mod:`.mms`)."""
