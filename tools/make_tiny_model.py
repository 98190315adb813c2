"""Write a random-init Hugging Face model + a locally trained BPE tokenizer (no hub access).

    python tools/make_tiny_model.py --arch {llama,qwen2,qwen3} --out-dir DIR \
        [--hidden 64 --layers 2 --heads 4 --kv-heads 2 --vocab 512 --seed 0] [--head-dim D]
        [--rope-scaling {linear,llama3} --rope-factor F --rope-original-max-positions N]

Llama models tie input/output embeddings by default, Qwen2/Qwen3 models do not; Qwen2 carries qkv
biases and Qwen3 per-head q/k norms, so together they cover every layout the weight mapping handles.
`--rope-scaling llama3` writes Llama 3.1-style scaling (low/high frequency factors 1 and 4) over
`--rope-original-max-positions`: set it below the positions a test uses so the scaling shows.
"""
import argparse
import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)
from transformers.utils import logging as hf_logging

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|eos|>\n"
    "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_WORDS = ("the a of and to is has in how many more each total left gives buys sells apples books coins "
          "answer step so then first second we add subtract multiply divide equals Question Answer "
          "Natalia Tom Sara friends cookies boxes dollars minutes hours").split()


def _training_corpus(seed: int, n_lines: int = 4000):
    rng = random.Random(seed)
    for _ in range(n_lines):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        yield f"{words} {a} + {b} = {a + b}. {a} * {b} - {a} / 2 #### {a - b}\n"


def build_tokenizer(vocab_size: int, seed: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    # Single digits keep arithmetic learnable for tiny models; byte-level makes every string encodable.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_training_corpus(seed), trainer=trainer)
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(f"--vocab {vocab_size} is too small for a byte-level BPE "
                         f"(needs >= {256 + len(SPECIAL_TOKENS)})")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def rope_parameters(args) -> dict:
    rope = {"rope_type": args.rope_scaling or "default", "rope_theta": args.rope_theta}
    if args.rope_scaling:
        rope["factor"] = args.rope_factor
    if args.rope_scaling == "llama3":
        rope.update(low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=args.rope_original_max_positions)
    return rope


def build_config(args, tokenizer):
    common = dict(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn or 3 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim or args.hidden // args.heads,
        max_position_embeddings=args.max_positions, rms_norm_eps=1e-6, rope_parameters=rope_parameters(args),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32",
    )
    tie = args.arch == "llama" if args.tie_embeddings is None else args.tie_embeddings
    if args.arch == "llama":
        return LlamaConfig(tie_word_embeddings=tie, attention_bias=False, mlp_bias=False, **common), LlamaForCausalLM
    if args.arch == "qwen2":
        return Qwen2Config(tie_word_embeddings=tie, use_sliding_window=False, **common), Qwen2ForCausalLM
    return Qwen3Config(tie_word_embeddings=tie, attention_bias=False, use_sliding_window=False, **common), \
        Qwen3ForCausalLM


def randomise_what_hf_inits_constant(model, arch: str) -> None:
    """HF zero-inits biases and one-inits norms: random ones make their mapping observable."""
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            if arch == "qwen2":
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                    proj.bias.normal_(0, 0.02)
            if arch == "qwen3":
                for norm in (attn.q_norm, attn.k_norm):
                    norm.weight.uniform_(0.5, 1.5)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["llama", "qwen2", "qwen3"], required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ffn", type=int, default=None, help="intermediate size (default 3 x hidden)")
    p.add_argument("--max-positions", type=int, default=2048)
    p.add_argument("--head-dim", type=int, default=None, help="default: hidden / heads")
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--rope-scaling", choices=["linear", "llama3"], default=None)
    p.add_argument("--rope-factor", type=float, default=8.0)
    p.add_argument("--rope-original-max-positions", type=int, default=64, help="llama3 scaling's original context")
    p.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None,
                   help="default: tied for llama, untied for qwen2 and qwen3")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    hf_logging.disable_progress_bar()  # one tiny shard: transformers' "Writing model shards" bar is noise
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer(args.vocab, args.seed)
    config, model_cls = build_config(args, tokenizer)
    model = model_cls(config).float()
    randomise_what_hf_inits_constant(model, args.arch)
    model.save_pretrained(args.out_dir)
    tokenizer.save_pretrained(args.out_dir)
    print(f"wrote {args.arch} model ({sum(p.numel() for p in model.parameters())} params) to {args.out_dir}")


if __name__ == "__main__":
    main()
