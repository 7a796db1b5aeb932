import sys
Q = ["What is the capital of France?", "What is the capital of Italy?", "What is the capital of Japan?",
     "What is the chemical formula of water?", "What is the opposite of hot?", "What is the capital of Spain?",
     "What is the capital of Germany?", "What is the largest planet in the solar system?", "How many legs does a spider have?",
     "What color is the sky on a clear day?", "What is 2 + 2?", "Who wrote Romeo and Juliet?"]
def main():
    from vllm import LLM, SamplingParams
    p = sys.argv[1]; dt = sys.argv[2]
    llm = LLM(model=p, dtype=dt, max_model_len=2048, enforce_eager=True, max_num_seqs=16)
    sp = SamplingParams(temperature=0, max_tokens=40)
    t = open("/work/main/deployments/templates/chatml_hermes.jinja").read()
    outs = llm.chat([[{"role": "user", "content": q}] for q in Q], sp, chat_template=t)
    for q, o in zip(Q, outs):
        print("OUT", dt, q, "->", repr(o.outputs[0].text), o.outputs[0].finish_reason, flush=True)
    o = llm.chat([{"role": "system", "content": "You are a pirate. Always start your answer with 'Arr'."}, {"role": "user", "content": "What is the capital of France?"}], sp, chat_template=t)
    print("OUT", dt, "PIRATE ->", repr(o[0].outputs[0].text), flush=True)
if __name__ == "__main__":
    main()
