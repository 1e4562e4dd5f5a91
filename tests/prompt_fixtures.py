"""A small offline tokenizer with a ChatML chat template, and InstructUIE-style records."""

from __future__ import annotations

from evojax_merge.zoo.tokenizer import build_tokenizer

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

WORDS = ("user assistant system find relations output format is relation word option work for live in located "
         "text answer igor khmelnov pacific fleet ann lee oslo lena park orbit labs vladivostok burlington vt none "
         "joined the in at and of a")


def chat_tokenizer(words: str = WORDS):
    """Word-level tokenizer + ``<|im_start|>``/``<|im_end|>`` specials + a ChatML template."""
    tok = build_tokenizer([words])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def ie_record(i: int, shots: int = 3) -> dict:
    """An RE record in the released sets' shape: the instruction carries the text and the cue."""
    names = [("Igor Khmelnov", "Pacific Fleet"), ("Ann Lee", "Oslo"), ("Lena Park", "Orbit Labs"),
             ("Ann Lee", "Burlington"), ("Igor Khmelnov", "Vladivostok")]
    rels = ["Work for", "Live in", "Work for", "Live in", "Located in"]

    def one(j: int) -> tuple[str, str, str]:
        head, tail = names[j % len(names)]
        text = f"{head} joined {tail} ."
        instruction = (f"Find relations . Output format is relation : word , word . Option : work for , live in , "
                       f"located in \nText : {text} \nAnswer:")
        return instruction, text, f" {rels[j % len(rels)]}: {head}, {tail}"

    instruction, text, output = one(i)
    history = [[one(i + k + 1)[0], one(i + k + 1)[2]] for k in range(shots)]
    return {"instruction": instruction, "input": text, "output": output, "history": history}
