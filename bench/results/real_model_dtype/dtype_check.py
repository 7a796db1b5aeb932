import sys, time
def main():
    from vllm import LLM, SamplingParams
    p = sys.argv[1]; dt = sys.argv[2]
    llm = LLM(model=p, dtype=dt, max_model_len=2048, enforce_eager=True, max_num_seqs=64)
    sp = SamplingParams(temperature=0, max_tokens=24)
    m = [{"role": "user", "content": "What is the capital of France?"}]
    print("OUT", dt, repr(llm.chat(m, sp)[0].outputs[0].text), flush=True)
    sp = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    prompts = [f"Story number {i}: once upon a time in a land far away, " * 8 for i in range(64)]
    llm.generate(prompts[:4], sp)
    t = time.monotonic(); llm.generate(prompts, sp); dt_s = time.monotonic() - t
    print("TPUT", dt, f"{64*64/dt_s:.0f} tok/s", flush=True)
if __name__ == "__main__":
    main()
