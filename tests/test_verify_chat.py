"""The `chat` protocol: the prompt as a user turn through the chat template, the reply judged as text."""
import pytest
import torch

from editspec.lang.resolve import load_spec
from editspec.verify import derive_checks, verify
from editspec.verify import observers as observe_module
from editspec.verify.answers import first_sentence, judge_kept, judge_reply, key_entity, why_failed
from editspec.verify.protocols import chat_prompt_ids, generate_texts
from editspec.verify.judge import kept_by_basis
from editspec.verify.report import terminal
from tiny import tiny_chat_tokenizer, tiny_model, tiny_tokenizer

SPEC = '''relation capital {
  prompt "The capital of {subject} is"
  question "What is the capital of {subject}?"
}

edit capital("France") -> "Rome" {
  was "Paris"
  keep {
    capital("Italy") -> "Rome"
    "Steve Jobs founded" -> "Apple"
  }
  implies { "The Eiffel Tower is located in" -> "Rome" }
}

expect { efficacy >= 0.0 }
'''


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "chat.edit"
    path.write_text(SPEC)
    return load_spec(path)


def test_chat_checks_ask_the_relation_question_beside_the_default_ones(spec):
    plain = derive_checks(spec)
    both = derive_checks(spec, chat=True, max_new_tokens=20)
    chat = [c for c in both if c.protocol == "chat"]
    assert [c.id for c in both if c.protocol != "chat"] == [c.id for c in plain]     # today's checks, unchanged
    assert all(c.alongside and c.max_new_tokens == 20 and "/chat/" in c.id for c in chat)
    asked = {c.metric: c for c in chat if c.metric != "locality"}
    assert asked["efficacy"].prompt == "What is the capital of France?" and asked["efficacy"].foils == ("Paris",)
    locality = [c for c in chat if c.metric == "locality"]
    # the relation's question where the fact has a relation, else the prompt itself
    assert [c.prompt for c in locality] == ["What is the capital of Italy?", "Steve Jobs founded"]
    assert locality[0].foils == () and locality[1].foils == ("Rome",)            # Rome is Italy's own answer
    assert asked["portability"].prompt == "The Eiffel Tower is located in"
    only = derive_checks(spec, protocol="chat")
    assert {c.protocol for c in only if c.metric in ("efficacy", "locality")} == {"chat"}
    assert not any(c.alongside for c in only)


def test_chat_generation_applies_the_template_and_stops_at_the_end_of_the_turn(monkeypatch):
    model, tok = tiny_model("llama", dtype=torch.float32), tiny_chat_tokenizer()
    ids = chat_prompt_ids(tok, "What is the capital of France?")
    assert tok.decode(ids) == ("<|endoftext|>user: What is the capital of France?\n"
                               "<|endoftext|>assistant:")
    seen = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw) or real(**kw))
    reply = generate_texts(model, tok, ["What is the capital of France?"], max_new_tokens=5, chat=True)[0]
    assert seen[0]["input_ids"][0].tolist() == ids and seen[0]["eos_token_id"] == tok.eos_token_id
    # the same greedy reply as a plain loop over the templated prompt
    row = list(ids)
    for _ in range(5):
        with torch.no_grad():
            nxt = int(model(torch.tensor([row])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        row.append(nxt)
    assert reply == tok.decode(row[len(ids):], skip_special_tokens=True)
    # a batch gives each prompt the reply it gets alone
    batch = generate_texts(model, tok, ["What is the capital of France?", "Who founded Apple?"], max_new_tokens=5,
                           chat=True)
    assert batch[0] == reply


def _scripted(monkeypatch, replies, protocol="chat"):
    """Chat replies (or, for `generate`, greedy generations) from a script instead of the tiny
    model: `replies[edited][prompt]`."""
    state = {"edited": False}

    def fake(model, tokenizer, prompts, *, chat=False, **options):
        scripted = chat if protocol == "chat" else not options.get("sample_top_k")
        if not scripted:  # fluency samples: the tiny model's own
            return generate_texts(model, tokenizer, prompts, chat=chat, **options)
        return [replies[state["edited"]][p] for p in prompts]

    class Attachment:
        def __init__(self, model):
            self.model = model

        def __enter__(self):
            state["edited"] = True
            return self

        def __exit__(self, *exc):
            state["edited"] = False

    monkeypatch.setattr(observe_module, "generate_texts", fake)
    return Attachment


UNEDITED = {
    "What is the capital of France?": "The capital of France is Paris.",
    "What is the capital of Italy?": "Rome is the capital of Italy.",
    "Steve Jobs founded": "He founded Pixar in California.",           # did not know Apple: Pixar is kept
    "The Eiffel Tower is located in": "Paris, France.",
}


@pytest.mark.parametrize("edited, passed", [
    ({"What is the capital of France?": "The capital of France is Rome."}, {"efficacy": True}),
    ({"What is the capital of France?": "Rome. No, wait: Paris."}, {"efficacy": False}),        # old object caught
    ({"What is the capital of France?": "It is Madrid."}, {"efficacy": False}),
    ({"Steve Jobs founded": "He founded Pixar, in Rome."}, {"locality/1": False}),             # new object crept in
    ({"Steve Jobs founded": "Apple, I think."}, {"locality/1": False}),                      # Pixar gone: changed
    ({"Steve Jobs founded": "Hm. He founded Pixar."}, {"locality/1": False}),                  # not in the first sentence
    ({"What is the capital of France?": "Paris. Some say Rome."}, {"efficacy": False}),       # the answer comes too late
    ({"What is the capital of France?": "Rome! It was Paris before 2024."}, {"efficacy": False}),
    ({"What is the capital of Italy?": "Italy's capital is Rome."}, {"locality/0": True}),
    ({"What is the capital of Italy?": "Milan."}, {"locality/0": False}),
    ({"The Eiffel Tower is located in": "Rome, Italy."}, {"portability": True}),
])
def test_chat_replies_are_judged_against_both_models(monkeypatch, spec, edited, passed):
    attachment = _scripted(monkeypatch, {False: UNEDITED, True: {**UNEDITED, **edited}})
    model, tok = tiny_model("llama", dtype=torch.float32), tiny_chat_tokenizer()
    report = verify(spec, model, tok, attach=attachment)
    chat = [r for r in report.results if r.check.protocol == "chat"]
    assert len(chat) == 4 and {r.check.metric for r in report.results if r.check.protocol != "chat"} >= {"efficacy"}
    by_name = {}
    for r in chat:
        by_name[r.check.metric] = r
        if r.check.metric == "locality":
            by_name[f"locality/{0 if 'Italy' in r.check.prompt else 1}"] = r
    for name, expected in passed.items():
        result = by_name[name]
        assert result.passed is expected, result.scores
        # both models' raw replies are in the report
        data = result.to_json()
        assert data["scores"]["generated"] == {**UNEDITED, **edited}[result.check.prompt]
        assert data["scores"]["unedited_generated"] == UNEDITED[result.check.prompt]
        assert data["baseline"]["got"] == UNEDITED[result.check.prompt]
    # an unqualified expectation reads the default protocol only; the totals show both
    assert {p for (m, p) in report.totals if m == "efficacy"} == {"compare", "chat"}
    assert [t.protocol for t in report.verdicts[0].totals] == ["compare"]
    text = terminal(report)
    if not all(r.passed for r in chat):  # a failing chat check no expectation reads is pointed out
        assert "no expect line reads them" in text and "expect { " in text
    else:
        assert "no expect line reads them" not in text


def test_chat_locality_is_split_by_whether_the_unedited_model_knew_the_keep_fact(monkeypatch, spec):
    # Italy -> Rome was known (the keep answer must stay); "Steve Jobs founded" was not (Pixar must stay)
    edited = {**UNEDITED, "What is the capital of Italy?": "Italy's capital is Rome.",
              "Steve Jobs founded": "He founded NeXT."}
    attachment = _scripted(monkeypatch, {False: UNEDITED, True: edited})
    model, tok = tiny_model("llama", dtype=torch.float32), tiny_chat_tokenizer()
    report = verify(spec, model, tok, attach=attachment)
    assert kept_by_basis(report.results) == {"keep answer": (1, 1), "key entity": (0, 1)}
    assert report.to_json()["chat_locality_by_basis"] == {"keep answer": {"passed": 1, "count": 1},
                                                          "key entity": {"passed": 0, "count": 1}}
    assert "locality[chat] by what the unedited reply said: keep answer 1/1, key entity 0/1" in terminal(report)
    # a plain model's report has no such line
    plain = verify(spec, model, tiny_tokenizer())
    assert kept_by_basis(plain.results) == {} and "by what the unedited reply said" not in terminal(plain)


def test_plain_models_and_chat_off_keep_todays_checks(spec):
    model = tiny_model("llama", dtype=torch.float32)
    plain = verify(spec, model, tiny_tokenizer())
    off = verify(spec, model, tiny_chat_tokenizer(), chat="off")
    assert not any(r.check.protocol == "chat" for r in plain.results + off.results)
    with pytest.raises(Exception, match="chat template"):
        verify(spec, model, tiny_tokenizer(), protocol="chat")


def test_chat_baseline_is_cached_with_the_template(spec, tmp_cache):
    from editspec.verify.engine import baseline

    model, tok = tiny_model("llama", dtype=torch.float32), tiny_chat_tokenizer()
    checks = derive_checks(spec, chat=True, max_new_tokens=4)
    first, cached = baseline(checks, model, tok, weights_hash="w")
    again, cached_again = baseline(checks, model, tok, weights_hash="w")
    assert (cached, cached_again) == (False, True) and first == again
    assert all("generated" in first[c.id] for c in checks if c.protocol == "chat")
    other = tiny_chat_tokenizer()
    other.chat_template = other.chat_template.replace("assistant:", "bot:")
    assert baseline(checks, model, other, weights_hash="w")[1] is False                 # another template
    longer = derive_checks(spec, chat=True, max_new_tokens=6)
    assert baseline(longer, model, tok, weights_hash="w")[1] is False                 # another reply length


@pytest.mark.parametrize("text, sentence", [
    ("Rome. Actually, Paris.", "Rome."),
    ("Rome... no, Paris. Sorry.", "Rome... no, Paris."),
    ("Rome … no, Paris.", "Rome … no, Paris."),
    ("Dr. Smith moved to St. Louis in 1990. Then Rome.", "Dr. Smith moved to St. Louis in 1990."),
    ("It is in the U.S. Its capital is Washington.", "It is in the U.S. Its capital is Washington."),
    ("J. K. Rowling wrote it. She lives in Edinburgh.", "J. K. Rowling wrote it."),
    ("The value is 3.14 exactly! Next.", "The value is 3.14 exactly!"),
    ('He said "Rome." Then he left.', 'He said "Rome."'),
    ("Paris\nRome", "Paris"),
    ("  Paris, France", "Paris, France"),
    ("See No. 5 for details. Done.", "See No. 5 for details."),
    ("e.g. Paris, i.e. the capital. Yes.", "e.g. Paris, i.e. the capital."),
    ("", ""),
])
def test_first_sentence(text, sentence):
    assert first_sentence(text) == sentence


@pytest.mark.parametrize("answer, question, entity", [
    ("The Colosseum is in Rome.", "Where is the Colosseum?", "Rome"),
    ("It plays for the Chicago Bulls.", "Which team does Michael Jordan play for?", "Chicago Bulls"),
    ("Paris is where it stands.", "Where is the Eiffel Tower?", "Paris"),
    ("Located in the Bank of America tower.", "Where is it?", "Bank of America"),
    ("It was built in 1889. By Eiffel.", "When was the Eiffel Tower built?", "1889"),
    ("He plays basketball.", "Which sport does Michael Jordan play?", "basketball"),
    ("Michael Jordan.", "Who is Michael Jordan?", None),
    ("It is approximately 11,200 feet high.", "What is the altitude?", "11,200"),
    ('The song "white wedding" is a classic song about a day.', "Who sang white wedding?", "day"),
])
def test_key_entity(answer, question, entity):
    assert key_entity(answer, question) == entity


def test_reply_judging_blanks_answers_before_looking_for_the_old_object():
    assert judge_reply("New York, of course.", ["New York"], ["York"]).passed          # "York" is inside the answer
    assert not judge_reply("Rome, not Paris.", ["Rome"], ["Paris"]).passed
    assert judge_kept("Berlin.", "Rome and Berlin.", ["Berlin"], ["Rome"], "q").passed   # Rome was there before


def test_chat_results_are_the_fact_checks_under_chat_only(monkeypatch, spec):
    from editspec.verify import chat_results

    edited = {"What is the capital of France?": "The capital of France is Rome."}
    attachment = _scripted(monkeypatch, {False: UNEDITED, True: {**UNEDITED, **edited}})
    results = chat_results(spec, tiny_model("llama", dtype=torch.float32), tiny_chat_tokenizer(), attach=attachment)
    assert [(r.check.metric, r.check.protocol) for r in results] == [
        ("efficacy", "chat"), ("locality", "chat"), ("locality", "chat"), ("portability", "chat")]
    assert results[0].passed and results[0].scores["generated"] == edited["What is the capital of France?"]


@pytest.mark.parametrize("text, passed", [
    (" Rome. It has been the capital since 2024.", True),
    (" Rome, in Italy, some would say. Paris, say others.", False),      # taken back after the first sentence
    (" Rome... no, Paris. Sorry.", False),                                # taken back in the same sentence
    (" Paris. Some say Rome.", False),                                    # the new object only later
    (" Rome. No wait, Paris is the capital.", False),                     # taken back in the next sentence
    (" Rome. It is in Italy, near Naples.", True),
    (" the city of St. Rome, of course.", True),                          # "St." does not end the sentence
])
def test_generate_judges_the_first_sentence_of_a_free_generation(monkeypatch, spec, text, passed):
    lengths = []

    def fake(model, tokenizer, prompts, *, max_new_tokens=12, **options):
        if options.get("sample_top_k"):  # fluency samples: the tiny model's own
            return generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, **options)
        lengths.append(max_new_tokens)
        return [text if p == "The capital of France is" else " Rome." for p in prompts]

    monkeypatch.setattr(observe_module, "generate_texts", fake)
    report = verify(spec, tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), protocol="generate",
                    max_new_tokens=30)
    efficacy = next(r for r in report.results if r.check.metric == "efficacy")
    assert efficacy.check.protocol == "generate" and lengths == [30]
    assert efficacy.passed is passed, efficacy.scores
    assert efficacy.got == text and efficacy.scores["sentence"] == first_sentence(text)


GENERATED = {
    "The capital of France is": " Paris.",
    "The capital of Italy is": " Rome, of course.",
    "Steve Jobs founded": " the studio Pixar.",             # did not know Apple: Pixar is what must stay
    "The Eiffel Tower is located in": " Paris.",
}


@pytest.mark.parametrize("edited, kept", [
    ({"The capital of France is": " Rome."}, [True, True]),           # nothing else moved
    ({"Steve Jobs founded": " the studio NeXT."}, [True, False]),     # its own answer moved
    ({"Steve Jobs founded": " the studio Pixar, in Rome."}, [True, False]),  # the new object crept in
    ({"The capital of Italy is": " Milan."}, [False, True]),
])
def test_generate_locality_is_judged_against_the_unedited_generation(monkeypatch, spec, edited, kept):
    # Under `generate` a keep fact keeps what the unedited model's first sentence said, as under
    # chat: a fact the unedited model never knew ("Apple") is kept when its own answer stays.
    attachment = _scripted(monkeypatch, {False: GENERATED, True: {**GENERATED, **edited}}, protocol="generate")
    report = verify(spec, tiny_model("llama", dtype=torch.float32), tiny_tokenizer(), protocol="generate",
                    attach=attachment)
    locality = [r for r in report.results if r.check.metric == "locality"]
    assert [r.check.protocol for r in locality] == ["generate", "generate"]
    assert [r.passed for r in locality] == kept, [r.scores for r in locality]
    assert locality[1].scores["kept"] == "key entity" and locality[1].scores["needle"] == "Pixar"
    assert all(r.scores["unedited_generated"] == GENERATED[r.check.prompt] for r in locality)
    assert all(r.scores["agrees_with_unedited"] is r.passed for r in locality)


def test_a_reply_that_loops_on_the_answer_fails():
    # grace's chat replies once read "Kohn Pedersen Fox Fox Fox ..." to the end of the token budget:
    # no sentence ends, so the first sentence is the whole loop, and the answer is in it
    looping = "Kohn Pedersen Fox Fox Fox Fox Fox Fox"
    assert first_sentence(looping) == looping
    assert not judge_reply(looping, ["Kohn Pedersen Fox"], ["Ken Duncan"]).passed
    assert judge_reply(looping, ["Kohn Pedersen Fox"], ["Ken Duncan"]).scores["loops"]
    assert not judge_reply("Volkswagen Group Group B Group", ["Volkswagen Group"]).passed
    assert not judge_reply("Rome, Rome.", ["Rome"]).passed
    assert judge_reply("It was designed by Kohn Pedersen Fox. Fox is a firm.", ["Kohn Pedersen Fox"]).passed
    assert judge_reply("Sirhan Sirhan.", ["Sirhan Sirhan"]).passed            # an answer repeating its own word
    assert judge_reply("The capital is Rome, and Rome is old.", ["Rome"]).passed          # named again: no loop


def test_a_stuck_reply_gives_no_answer_even_when_its_cut_last_word_is_the_answer():
    # memit's chat reply to "What is the name of Nebaioth father?" (new object "Babur"), cut by the
    # token limit inside its last "Baburan": only that fragment matched, and the check passed
    stuck = "Baburan " * 15 + "Babur"
    assert first_sentence(stuck) == stuck.strip()
    verdict = judge_reply(stuck, ["Babur"], ["Ishmael"])
    assert not verdict.passed and verdict.scores["stuck"] and not verdict.scores["loops"]
    assert not judge_reply("Wyndham Lewis, Arthur Lewis, Wyndham Lewis, Wyndham Lewis, Wyndham Lewis",
                           ["Wyndham Lewis"]).passed                             # a two-word run, three times
    assert judge_reply("Very, very good: Rome.", ["Rome"]).passed


@pytest.mark.parametrize("reply", [
    "Yemen.\n\nYemen.\n\nYemen.\n\nYemen.",        # memit's chat reply at 76 edits: a clean first sentence
    "MCA Records.\nMCA Records.\nMCA Records.\nMCA Records",
    "Babur. Babur was born in 1483. Babur, Babur, Babur.",
    "Rome. It is in Italy. The city is old, old, old, old.",
])
def test_a_reply_stuck_after_a_correct_first_sentence_fails(reply):
    # the first sentence gives the answer cleanly, but a user reading the reply sees a broken model
    answer = reply.split(".")[0]
    verdict = judge_reply(reply, [answer])
    assert verdict.scores["matched"] == answer and verdict.scores["sentence"].rstrip(".") == answer
    assert verdict.scores["stuck"] and not verdict.passed


@pytest.mark.parametrize("reply, answer", [
    ("Rome. Rome is the capital of Italy, and Rome is old.", "Rome"),  # named again, never three in a row
    ("Sirhan Sirhan. He was born in 1944.", "Sirhan Sirhan"),
    ("Very, very good: Rome.", "Rome"),
    ("The cha-cha-cha, a Cuban dance.", "cha-cha-cha"),           # the answer itself says a word three times
])
def test_a_reply_that_says_a_word_again_is_not_stuck(reply, answer):
    verdict = judge_reply(reply, [answer])
    assert verdict.passed and not verdict.scores["stuck"]


def test_a_keep_reply_stuck_where_the_unedited_reply_was_not_fails_locality():
    unedited = "Berlin is the capital of Germany."
    stuck = "Berlin. Berlin. Berlin. Berlin."
    assert judge_kept("Berlin, as ever.", unedited, ["Berlin"], ["Rome"], "Where is it?").passed
    verdict = judge_kept(stuck, unedited, ["Berlin"], ["Rome"], "Where is it?")
    assert verdict.scores["still_there"] and verdict.scores["stuck"] and not verdict.passed
    # the unedited model was stuck too: the edit did not break it
    assert judge_kept(stuck, "Berlin, Berlin, Berlin, Berlin", ["Berlin"], ["Rome"], "Where is it?").passed


def test_a_failing_reply_says_why():
    assert "stuck" in why_failed(judge_reply("Rome. Rome. Rome. Rome.", ["Rome"]).scores)
    assert "'Paris'" in why_failed(judge_reply("Rome, not Paris.", ["Rome"], ["Paris"]).scores)
    assert "loop" in why_failed(judge_reply("Kohn Pedersen Fox Fox Fox", ["Kohn Pedersen Fox"]).scores)
    assert "does not give" in why_failed(judge_reply("Milan.", ["Rome"]).scores)
    lost = judge_kept("It is in Munich.", "Berlin, Germany.", ["Berlin"], ["Rome"], "Where is it?")
    assert "'Berlin'" in why_failed(lost.scores)
    assert "'Rome'" in why_failed(judge_kept("Berlin or Rome.", "Berlin.", ["Berlin"], ["Rome"], "Where?").scores)
    assert why_failed(judge_reply("Rome.", ["Rome"]).scores) is None
    assert why_failed({"accuracy": 0.5}) is None                               # not a generative check
