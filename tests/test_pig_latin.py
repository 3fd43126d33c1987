"""Pig Latin rules (examples), properties (hypothesis), the sentence data and the metrics."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_utils import pig_latin


@pytest.mark.parametrize("word, expected", [
    ("pig", "igpay"), ("string", "ingstray"), ("eat", "eatway"), ("egg", "eggway"),
    ("yes", "esyay"), ("rhythm", "ythmrhay"), ("my", "ymay"), ("style", "ylestay"),
    ("queen", "eenquay"), ("square", "aresquay"), ("qat", "atqay"), ("hmm", "hmmay"),
    ("don't", "on'tday"), ("it's", "it'sway"),
    ("Pig", "Igpay"), ("I", "Iway"), ("A", "Away"), ("NASA", "ASANAY"), ("OK", "OKWAY"),
    ("McDonald", "onaldMcDay"), ("iPhone", "iPhoneway"),
    ("42", "42"), ("R2D2", "R2D2"), ("café", "café"),
])
def test_word_rules(word, expected):
    assert pig_latin.pig_latin_word(word) == expected


@pytest.mark.parametrize("sentence, expected", [
    ("Pigs eat string, don't they?", "Igspay eatway ingstray, on'tday eythay?"),
    ("A well-known rhythm!", "Away ellway-ownknay ythmrhay!"),
    ("'Quick,' she said -- twice.", "'Ickquay,' eshay aidsay -- icetway."),
    ("Room 101 opens at 9:30.", "Oomray 101 opensway atway 9:30."),
    ("", ""), ("   ", "   "), ("?!", "?!"),
])
def test_sentences(sentence, expected):
    assert pig_latin.pig_latin(sentence) == expected


def test_bad_input_says_what_to_do():
    with pytest.raises(ValueError, match="needs a string"):
        pig_latin.pig_latin(None)
    with pytest.raises(ValueError, match="needs a string"):
        pig_latin.pig_latin(["pig"])


# ---------------------------------------------------------------------------------- properties
@settings(max_examples=300, deadline=None, database=None)
@given(st.text())
def test_never_crashes_and_keeps_punctuation_and_word_count(text):
    out = pig_latin.pig_latin(text)
    assert isinstance(out, str)
    assert len(pig_latin.words(out)) == len(pig_latin.words(text))
    assert pig_latin.skeleton(out)[::2] == pig_latin.skeleton(text)[::2]  # what lies between the words


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from("abcdeiouyqwxzAEIOUQYSTR'-, .!?0"), max_size=40))
def test_properties_on_word_like_text(text):
    out = pig_latin.pig_latin(text)
    assert pig_latin.skeleton(out)[::2] == pig_latin.skeleton(text)[::2]
    for before, after in zip(pig_latin.words(text), pig_latin.words(out)):
        assert after == pig_latin.pig_latin_word(before)
        if pig_latin.is_translatable(before):
            assert after.lower().endswith("ay")
            assert sorted(after.lower()[:-2].replace("w", "")) == sorted(before.lower().replace("w", "")) \
                or after.lower().endswith("way")


ascii_word = st.from_regex(r"[a-z]{1,8}(?:'[a-z]{1,3})?", fullmatch=True)
cased_word = st.one_of(ascii_word, ascii_word.map(str.capitalize), ascii_word.map(str.upper))


@settings(max_examples=300, deadline=None, database=None)
@given(cased_word)
def test_every_word_is_among_its_candidates(word):
    translated = pig_latin.pig_latin_word(word)
    candidates = pig_latin.english_candidates(translated)
    assert word in candidates
    assert all(pig_latin.pig_latin_word(c) == translated for c in candidates)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(cased_word, min_size=1, max_size=6), st.sampled_from([" ", ", ", " - ", "; "]))
def test_round_trip_where_invertible(ws, sep):
    sentence = sep.join(ws) + "."
    vocab = {w.lower() for w in ws}
    forms = {}
    for w in vocab:
        forms.setdefault(pig_latin.pig_latin_word(w), set()).add(w)
    if any(len(v) > 1 for v in forms.values()):  # two of these words share a Pig Latin form
        with pytest.raises(ValueError, match="candidates"):
            pig_latin.from_pig_latin(pig_latin.pig_latin(sentence), vocab)
    else:
        assert pig_latin.from_pig_latin(pig_latin.pig_latin(sentence), vocab) == sentence


def test_ambiguous_words_are_reported():
    assert pig_latin.english_candidates("onway") == ["nwo", "on", "won"]
    with pytest.raises(ValueError, match="2 English candidates"):
        pig_latin.from_pig_latin("onway", {"on", "won"})
    assert pig_latin.from_pig_latin("onway", {"on", "won"}, strict=False) == "on"
    assert pig_latin.from_pig_latin("Ethay igpay.", {"the", "pig"}) == "The pig."


def test_project_sentences_round_trip_unless_two_words_collide():
    sentences = pig_latin.load_sentences()
    vocab = pig_latin.vocabulary(sentences)
    ok = 0
    for s in sentences:
        try:
            assert pig_latin.from_pig_latin(pig_latin.pig_latin(s), vocab) == s
            ok += 1
        except ValueError as err:
            assert "2 English candidates" in str(err)  # on/won, as/was, swarm/warms
    assert ok >= 0.8 * len(sentences)


# -------------------------------------------------------------------------------------- data
def test_sentence_set():
    sentences = pig_latin.load_sentences()
    assert len(sentences) >= 200
    assert len(set(sentences)) == len(sentences)
    assert all(3 <= len(s.split()) <= 12 for s in sentences)
    assert all(s[0].isupper() and s[-1] in ".?!" for s in sentences)


def test_pairs_and_formats():
    ds = pig_latin.pig_latin_pairs()
    assert ds.column_names == ["english", "pig_latin"]
    assert all(r["pig_latin"] == pig_latin.pig_latin(r["english"]) for r in ds)
    train, test = pig_latin.pig_latin_pairs(split="train"), pig_latin.pig_latin_pairs(split="test")
    assert len(train) + len(test) == len(ds)
    assert set(train["english"]).isdisjoint(test["english"])
    assert pig_latin.pig_latin_pairs(split="test")["english"] == test["english"]  # deterministic
    row = {"english": "The pig ate.", "pig_latin": "Ethay igpay ateway."}
    assert pig_latin.to_text(row) == {"text": "English: The pig ate.\nPig Latin: Ethay igpay ateway."}
    pc = pig_latin.to_prompt_completion(row)
    assert pc["prompt"] + pc["completion"] == pig_latin.to_text(row)["text"]
    msgs = pig_latin.to_messages(row)["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[1]["content"] == row["pig_latin"]
    for fmt in pig_latin.FORMATS:
        assert len(pig_latin.to_format(ds.select(range(3)), fmt)) == 3
    with pytest.raises(ValueError, match="choose one of"):
        pig_latin.to_format(ds, "chat")
    with pytest.raises(ValueError, match="pig_latin_pairs"):
        pig_latin.to_text({"sentence": "x"})
    with pytest.raises(ValueError, match="split"):
        pig_latin.pig_latin_pairs(split="validation")


# ----------------------------------------------------------------------------------- metrics
def test_metrics():
    assert pig_latin.edit_distance("kitten", "sitting") == 3
    assert pig_latin.edit_distance("", "abc") == 3
    assert pig_latin.char_accuracy("abc", "abc") == 1.0
    assert pig_latin.char_accuracy("", "") == 1.0
    assert pig_latin.char_accuracy("", "abc") == 0.0
    assert pig_latin.char_accuracy("igpay", "igpya") == pytest.approx(1 - 2 / 5)
    scores = pig_latin.translation_scores(["Igpay.", "x"], ["Igpay.", "Eatway."])
    assert scores["exact_match"] == 0.5
    assert scores["char_accuracy"] == 0.5
    with pytest.raises(ValueError):
        pig_latin.translation_scores(["a"], ["a", "b"])


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=20), st.text(max_size=20))
def test_char_accuracy_is_a_bounded_symmetric_similarity(a, b):
    acc = pig_latin.char_accuracy(a, b)
    assert 0.0 <= acc <= 1.0
    assert acc == pig_latin.char_accuracy(b, a)
    assert (acc == 1.0) == (a == b)
