"""`python -m bench.real_size`: the full-size model on this machine, from checkpoint to decode, in one command.

Stages, each recorded in `<work>/real_size.json` as soon as it ends (a stage already recorded is kept unless
`--redo` names it, so an interrupted run continues where it stopped):
- synth: `nemotron-edge synth --preset nano-9b-v2` (bf16, sharded; 18 GB): time, peak RSS, bytes;
- export: one `nemotron-edge export` per variant (fp16, bf16, int8, int4-rtn = int4 --no-gptq, int4 =
  int4 with GPTQ): time per stage, peak RSS, bundle bytes; `--limit-minutes V=M` stops variant V after M
  minutes and extrapolates, a later run continues it (`export --resume`);
- plan: `nemotron-edge plan` of each bundle for this machine's memory and for a Thor;
- run: each bundle that fits, in a fresh process: load time, prefill of 512 tokens, decode at batch 1 and
  4, resident memory (sampled VmRSS, VmHWM) against the plan, and the copy-bandwidth ceiling of decode;
- agreement: transformers' NemotronHForCausalLM (bf16) against a bundle on the same 16-token prompts,
  beside the same comparison on the `small` preset.
"""
