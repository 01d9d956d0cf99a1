"""A tiny random-weight Llama checkpoint with a real tokenizer, built offline in well under a second.

Other tests import ``make_tiny_model_dir``; the directory loads with AutoModelForCausalLM /
AutoTokenizer like any Hugging Face checkpoint (safetensors, tokenizer.json, chat template,
generation config).
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "<|im_start|>", "<|im_end|>"]  # ids 0..4, in this order
UNK_ID, PAD_ID, BOS_ID, IM_START_ID, EOS_ID = range(5)

_CORPUS = [
    "the quick brown fox jumps over the lazy dog .",
    "a language model predicts the next token from the previous tokens .",
    "energy per token falls as the batch size grows , until memory runs out .",
    "what is the capital of france ? paris is the capital of france .",
    "measure the power , the latency and the throughput of every run !",
    "one two three four five six seven eight nine ten",
    "user assistant system hello world please answer briefly",
]


def make_tokenizer():
    """A word-level fast tokenizer (about 80 tokens) with chat tokens, eos and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece()  # joins words with spaces
    core.train_from_iterator(_CORPUS, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model_dir(path: str | Path, *, dtype: str = "float32", seed: int = 0) -> Path:
    """Write a tiny LlamaForCausalLM (hidden 32, 2 layers, 4 heads, 2 kv heads) and its tokenizer to ``path``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer()
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)  # same weights every time
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out
