"""Pig Latin rules (examples), properties (hypothesis), the sentence data and the metrics."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_utils import pig_latin as pl


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
    assert pl.pig_latin_word(word) == expected


@pytest.mark.parametrize("sentence, expected", [
    ("Pigs eat string, don't they?", "Igspay eatway ingstray, on'tday eythay?"),
    ("A well-known rhythm!", "Away ellway-ownknay ythmrhay!"),
    ("'Quick,' she said -- twice.", "'Ickquay,' eshay aidsay -- icetway."),
    ("Room 101 opens at 9:30.", "Oomray 101 opensway atway 9:30."),
    ("", ""), ("   ", "   "), ("?!", "?!"),
])
def test_sentences(sentence, expected):
    assert pl.pig_latin(sentence) == expected


def test_bad_input_says_what_to_do():
    with pytest.raises(ValueError, match="needs a string"):
        pl.pig_latin(None)
    with pytest.raises(ValueError, match="needs a string"):
        pl.pig_latin(["pig"])


# ---------------------------------------------------------------------------------- properties
@settings(max_examples=300, deadline=None, database=None)
@given(st.text())
def test_never_crashes_and_keeps_punctuation_and_word_count(text):
    out = pl.pig_latin(text)
    assert isinstance(out, str)
    assert len(pl.words(out)) == len(pl.words(text))
    assert pl.skeleton(out)[::2] == pl.skeleton(text)[::2]  # what lies between the words


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from("abcdeiouyqwxzAEIOUQYSTR'-, .!?0"), max_size=40))
def test_properties_on_word_like_text(text):
    out = pl.pig_latin(text)
    assert pl.skeleton(out)[::2] == pl.skeleton(text)[::2]
    for before, after in zip(pl.words(text), pl.words(out)):
        assert after == pl.pig_latin_word(before)
        if pl.is_translatable(before):
            assert after.lower().endswith("ay")
            assert sorted(after.lower()[:-2].replace("w", "")) == sorted(before.lower().replace("w", "")) \
                or after.lower().endswith("way")


ascii_word = st.from_regex(r"[a-z]{1,8}(?:'[a-z]{1,3})?", fullmatch=True)
cased_word = st.one_of(ascii_word, ascii_word.map(str.capitalize), ascii_word.map(str.upper))


@settings(max_examples=300, deadline=None, database=None)
@given(cased_word)
def test_every_word_is_among_its_candidates(word):
    translated = pl.pig_latin_word(word)
    candidates = pl.english_candidates(translated)
    assert word in candidates
    assert all(pl.pig_latin_word(c) == translated for c in candidates)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(cased_word, min_size=1, max_size=6), st.sampled_from([" ", ", ", " - ", "; "]))
def test_round_trip_where_invertible(ws, sep):
    sentence = sep.join(ws) + "."
    vocab = {w.lower() for w in ws}
    forms = {}
    for w in vocab:
        forms.setdefault(pl.pig_latin_word(w), set()).add(w)
    if any(len(v) > 1 for v in forms.values()):  # two of these words share a Pig Latin form
        with pytest.raises(ValueError, match="candidates"):
            pl.from_pig_latin(pl.pig_latin(sentence), vocab)
    else:
        assert pl.from_pig_latin(pl.pig_latin(sentence), vocab) == sentence


def test_ambiguous_words_are_reported():
    assert pl.english_candidates("onway") == ["nwo", "on", "won"]
    with pytest.raises(ValueError, match="2 English candidates"):
        pl.from_pig_latin("onway", {"on", "won"})
    assert pl.from_pig_latin("onway", {"on", "won"}, strict=False) == "on"
    assert pl.from_pig_latin("Ethay igpay.", {"the", "pig"}) == "The pig."


def test_project_sentences_round_trip_unless_two_words_collide():
    sentences = pl.load_sentences()
    vocab = pl.vocabulary(sentences)
    ok = 0
    for s in sentences:
        try:
            assert pl.from_pig_latin(pl.pig_latin(s), vocab) == s
            ok += 1
        except ValueError as err:
            assert "2 English candidates" in str(err)  # on/won, as/was, swarm/warms
    assert ok >= 0.8 * len(sentences)


# -------------------------------------------------------------------------------------- data
def test_sentence_set():
    sentences = pl.load_sentences()
    assert len(sentences) >= 200
    assert len(set(sentences)) == len(sentences)
    assert all(3 <= len(s.split()) <= 12 for s in sentences)
    assert all(s[0].isupper() and s[-1] in ".?!" for s in sentences)


def test_pairs_and_formats():
    ds = pl.pig_latin_pairs()
    assert ds.column_names == ["english", "pig_latin"]
    assert all(r["pig_latin"] == pl.pig_latin(r["english"]) for r in ds)
    train, test = pl.pig_latin_pairs(split="train"), pl.pig_latin_pairs(split="test")
    assert len(train) + len(test) == len(ds)
    assert set(train["english"]).isdisjoint(test["english"])
    assert pl.pig_latin_pairs(split="test")["english"] == test["english"]  # deterministic
    row = {"english": "The pig ate.", "pig_latin": "Ethay igpay ateway."}
    assert pl.to_text(row) == {"text": "English: The pig ate.\nPig Latin: Ethay igpay ateway."}
    pc = pl.to_prompt_completion(row)
    assert pc["prompt"] + pc["completion"] == pl.to_text(row)["text"]
    msgs = pl.to_messages(row)["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[1]["content"] == row["pig_latin"]
    for fmt in pl.FORMATS:
        assert len(pl.to_format(ds.select(range(3)), fmt)) == 3
    with pytest.raises(ValueError, match="choose one of"):
        pl.to_format(ds, "chat")
    with pytest.raises(ValueError, match="pig_latin_pairs"):
        pl.to_text({"sentence": "x"})
    with pytest.raises(ValueError, match="split"):
        pl.pig_latin_pairs(split="validation")


# ----------------------------------------------------------------------------------- metrics
def test_metrics():
    assert pl.edit_distance("kitten", "sitting") == 3
    assert pl.edit_distance("", "abc") == 3
    assert pl.char_accuracy("abc", "abc") == 1.0
    assert pl.char_accuracy("", "") == 1.0
    assert pl.char_accuracy("", "abc") == 0.0
    assert pl.char_accuracy("igpay", "igpya") == pytest.approx(1 - 2 / 5)
    scores = pl.translation_scores(["Igpay.", "x"], ["Igpay.", "Eatway."])
    assert scores["exact_match"] == 0.5
    assert scores["char_accuracy"] == 0.5
    with pytest.raises(ValueError):
        pl.translation_scores(["a"], ["a", "b"])


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=20), st.text(max_size=20))
def test_char_accuracy_is_a_bounded_symmetric_similarity(a, b):
    acc = pl.char_accuracy(a, b)
    assert 0.0 <= acc <= 1.0
    assert acc == pl.char_accuracy(b, a)
    assert (acc == 1.0) == (a == b)
