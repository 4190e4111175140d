"""Ids and manifests of local: sources: unique per file, safe as file names."""

from __future__ import annotations

import json
import unicodedata

import pytest

from tests.test_audio_wavio import write_tone
from whisper_int8.audio import ErrorPolicy, local
from whisper_int8.audio.manifest import ID_RE
from whisper_int8.params import ParamError

ROWS = [{"audio": "spk1/001.wav", "text": "first speaker", "language": "en"},
        {"audio": "spk2/001.wav", "text": "second speaker", "language": "en"},
        {"audio": "spk2/my take.wav", "text": "a name with a space", "language": "en"}]  # fmt: skip
IDS = ["en-local-spk1-001", "en-local-spk2-001", "en-local-spk2-my-take"]


def write_audio(root) -> None:
    for row in ROWS:
        write_tone(root / row["audio"])


def test_manifest_ids_come_from_the_path_relative_to_the_manifest(tmp_path):
    """Regression: spk1/001.wav and spk2/001.wav both became en-local-001 (one was dropped)."""
    write_audio(tmp_path)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    ids = [it.id for it in local.from_manifest(manifest, ErrorPolicy("fail"))]
    assert ids == IDS and all(ID_RE.fullmatch(i) for i in ids)


def test_a_folder_gives_its_files_the_ids_a_manifest_gives_them(tmp_path):
    write_audio(tmp_path / "en")
    for row in ROWS:
        (tmp_path / "en" / row["audio"]).with_suffix(".txt").write_text(row["text"])
    items = local.from_folder(tmp_path / "en", ["en"], {"en"}, ErrorPolicy("fail"))
    assert [it.id for it in items] == IDS


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_manifest_saved_with_a_bom_keeps_its_rows(tmp_path, suffix):
    """Regression: Excel's UTF-8 BOM hid the first column (CSV) or broke the first line (JSONL)."""
    write_audio(tmp_path)
    manifest = tmp_path / f"manifest{suffix}"
    if suffix == ".csv":
        text = "audio,text,language\n" + "".join(f"{r['audio']},{r['text']},{r['language']}\n" for r in ROWS)
    else:
        text = "".join(json.dumps(r) + "\n" for r in ROWS)
    manifest.write_text(text, encoding="utf-8-sig")
    items = local.from_manifest(manifest, ErrorPolicy("fail"))
    assert [it.text for it in items] == [r["text"] for r in ROWS]


def test_a_manifest_source_records_paths_as_configured_so_every_clone_writes_the_same_bytes(
    tmp_path, monkeypatch
):
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "manifest.csv").write_text("audio,language,text\na.wav,en,hello there\n")
    monkeypatch.chdir(tmp_path)
    (item,) = local.items("rec/manifest.csv", ["en"], {"en"}, ErrorPolicy())
    assert item.source == "local:rec/a.wav"


def test_a_transcript_that_is_not_utf8_is_a_bad_item(tmp_path):
    """Regression: a Latin-1 transcript was read with errors="replace" and garbled into the reference."""
    write_tone(tmp_path / "en" / "a.wav")
    (tmp_path / "en" / "a.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    write_tone(tmp_path / "en" / "b.wav")
    (tmp_path / "en" / "b.txt").write_text("caf\xe9 au lait", encoding="utf-8")
    policy = ErrorPolicy()
    items = local.from_folder(tmp_path, ["en"], {"en"}, policy)
    assert [it.text for it in items] == ["caf\xe9 au lait"]
    assert policy.skipped == [
        {
            "language": "en",
            "cause": f"{tmp_path / 'en' / 'a.txt'}: transcript is not UTF-8 text; save it as UTF-8",
        }
    ]
    with pytest.raises(local.AudioInputError, match=r"a\.txt: transcript is not UTF-8 text"):
        local.from_folder(tmp_path, ["en"], {"en"}, ErrorPolicy("fail"))


def test_a_file_in_a_language_the_source_does_not_list_is_a_bad_item(tmp_path):
    """Regression: a folder am/ under a source listing en lost its files without a word."""
    write_tone(tmp_path / "en" / "a.wav")
    (tmp_path / "en" / "a.txt").write_text("an english clip")
    write_tone(tmp_path / "am" / "b.wav")
    (tmp_path / "am" / "b.txt").write_text("an amharic clip")
    policy = ErrorPolicy()
    assert [it.language for it in local.items(str(tmp_path), ["en"], {"en", "am"}, policy)] == ["en"]
    cause = (
        f"{tmp_path / 'am' / 'b.wav'}: language am (from its folder) is not listed for "
        f"local:{tmp_path}; list it in audio.sources or move the file"
    )
    assert policy.skipped == [{"language": "am", "cause": cause}]
    with pytest.raises(local.AudioInputError, match=r"language am \(from its folder\) is not listed"):
        local.items(str(tmp_path), ["en"], {"en", "am"}, ErrorPolicy("fail"))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("audio,language,text\nen/a.wav,en,one\nam/b.wav,am,two\n")
    policy = ErrorPolicy()
    assert [it.language for it in local.items(str(manifest), ["en"], {"en", "am"}, policy)] == ["en"]
    assert policy.skipped[0]["cause"].startswith(
        f"{manifest}:3: language am (from the manifest) is not listed"  # the file's line
    )


def test_a_missing_local_path_is_not_found(tmp_path):
    with pytest.raises(ParamError, match=r"audio.sources: local:nowhere/x\.csv: not found"):
        local.items("nowhere/x.csv", ["en"], {"en"}, ErrorPolicy())
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ParamError, match=r"notes.txt: not a folder or a .csv/.jsonl manifest"):
        local.items(str(tmp_path / "notes.txt"), ["en"], {"en"}, ErrorPolicy())


def test_a_json_array_is_refused_as_a_manifest(tmp_path):
    """Regression: a pretty-printed JSON array gave 'not valid JSON' for each of its lines."""
    write_audio(tmp_path)
    (tmp_path / "m.json").write_text(json.dumps(ROWS, indent=2))
    with pytest.raises(local.AudioInputError, match=r"m.json: a JSON array; a manifest is JSON Lines"):
        local.from_manifest(tmp_path / "m.json", ErrorPolicy())
    (tmp_path / "m.json").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert [it.id for it in local.from_manifest(tmp_path / "m.json", ErrorPolicy())] == IDS


def test_a_bad_manifest_row_is_one_bad_item_named_by_its_file_line(tmp_path):
    """Regression: one line of bad JSON (or one non-UTF-8 row) dropped every row of the manifest, and
    a JSON list or number as language crashed the summary (TypeError) after every clip was decoded."""
    write_audio(tmp_path)
    good = [json.dumps(r) for r in ROWS]
    x = '{"audio": "x.wav", '
    lines = [good[0], "", x + "}", good[1], x + '"text": "t", "language": ["en"]}',
             x + '"text": {"en": "t"}, "language": "en"}', '"just a string"', good[2]]  # fmt: skip
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(
        "\n".join(lines).encode() + b'\n{"audio": "a.wav", "text": "caf\xe9", "language": "en"}\n'
    )
    policy = ErrorPolicy()
    assert [it.id for it in local.from_manifest(manifest, policy)] == IDS
    causes = [s["cause"].removeprefix(f"{manifest}:") for s in policy.skipped]
    assert [c.split(":")[0] for c in causes] == ["3", "5", "6", "7", "9"]
    assert (
        "'language' must be a string, not list" in causes[1]
        and "'text' must be a string, not dict" in causes[2]
    )
    assert "not UTF-8" in causes[4] and policy.counts() == {"?": 4, "en": 1}


def test_a_csv_header_is_read_as_excel_users_write_it_and_a_wrong_one_is_named(tmp_path):
    write_audio(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text("Audio, Text ,LANGUAGE\n" + "".join(f"{r['audio']},{r['text']},en\n" for r in ROWS))
    assert [it.id for it in local.from_manifest(manifest, ErrorPolicy("fail"))] == IDS
    manifest.write_text("audio,text,language\n\nspk1/001.wav,first,en\n\n\nspk2/001.wav,,en\n")
    policy = ErrorPolicy()
    assert len(local.from_manifest(manifest, policy)) == 1
    assert policy.skipped[0]["cause"].startswith(
        f"{manifest}:6: empty or missing transcript"
    )  # blank lines count
    manifest.write_text("audio;text;language\nspk1/001.wav;first;en\n")
    with pytest.raises(
        local.AudioInputError, match=r"no audio, text, language column \(found audio;text;language\)"
    ):
        local.from_manifest(manifest, ErrorPolicy())


def test_a_long_file_name_gives_an_id_that_is_still_a_file_name(tmp_path):
    """Regression: a clip named by its 80-character Chinese transcript crashed the build (ENAMETOOLONG)."""
    name = ("我们明天早上八点在火车站见面" * 6)[:80]  # 240 bytes, 244 with .wav
    write_tone(tmp_path / "zh" / f"{name}.wav")
    (tmp_path / "zh" / f"{name}.txt").write_text("我们明天早上八点在火车站见面")
    (item,) = local.from_folder(tmp_path, ["zh"], {"zh"}, ErrorPolicy("fail"))
    assert (
        len(item.id.encode()) <= 237 and item.id.startswith("zh-local-zh-我们") and ID_RE.fullmatch(item.id)
    )
    short = "我们明天早上八点在火车站见面" * 5  # an id of 222 bytes, as before
    assert local._path_id("zh", f"zh/{short}.wav") == f"zh-local-zh-{short}"


def test_a_folder_reads_its_clips_through_links_and_nested_language_folders(tmp_path):
    """Regression: .aiff/.mp4 clips and symlinked speaker folders were skipped without a word, and
    nl/spk1/x.wav could not tell its language; sidecars (x.TextGrid) are not clips."""
    root = tmp_path / "rec"
    write_tone(root / "nl" / "spk1" / "a.wav")
    (root / "nl" / "spk1" / "a.txt").write_text("een")
    (root / "nl" / "spk1" / "a.TextGrid").write_text("an aligner's sidecar")
    write_tone(root / "nl" / "b.aiff")  # WAV bytes: the suffix decides whether it is a candidate
    (root / "nl" / "b.txt").write_text("twee")
    (root / "nl" / "README.md").write_text("not a clip")
    (root / "nl" / "d.xyz").write_text("?")
    (root / "nl" / "d.txt").write_text("vier")
    write_tone(tmp_path / "elsewhere" / "c.wav")
    (tmp_path / "elsewhere" / "c.txt").write_text("drie")
    (root / "nl" / "linked").symlink_to(tmp_path / "elsewhere")
    (root / "nl" / "latest").symlink_to(root / "nl" / "spk1")  # inside: listed under its real path
    (root / "nl" / "linked" / "loop").symlink_to(root)  # a cycle ends
    policy = ErrorPolicy()
    items = local.from_folder(root, ["en", "nl"], {"en", "nl", "it"}, policy)
    assert sorted((it.id, it.language) for it in items) == [
        ("nl-local-nl-b", "nl"), ("nl-local-nl-linked-c", "nl"), ("nl-local-nl-spk1-a", "nl")]  # fmt: skip
    (skipped,) = policy.skipped
    assert skipped["cause"].startswith(f"{root / 'nl' / 'd.xyz'}: has a transcript but .xyz is not an audio")
    # one configured language: a higher folder named like another code ("it" department) is not a language
    write_tone(tmp_path / "one" / "it" / "team" / "e.wav")
    (tmp_path / "one" / "it" / "team" / "e.txt").write_text("vijf")
    (item,) = local.from_folder(tmp_path / "one", ["nl"], {"nl", "it"}, ErrorPolicy("fail"))
    assert item.language == "nl"


def test_a_relative_source_missing_here_is_found_in_the_repository(tmp_path, monkeypatch):
    """`dvc exp run --temp` works in a copy without untracked folders; DVC_ROOT names the repository."""
    repo, work = tmp_path / "repo", tmp_path / "work"
    write_tone(repo / "rec" / "en" / "a.wav")
    (repo / "rec" / "en" / "a.txt").write_text("hello")
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with pytest.raises(ParamError, match=f"not found \\(looked in {work}\\); give"):
        local.items("rec", ["en"], {"en"}, ErrorPolicy())
    monkeypatch.setenv("DVC_ROOT", str(repo))
    (item,) = local.items("rec", ["en"], {"en"}, ErrorPolicy())
    with pytest.raises(ParamError, match=f"looked in {work} and {repo}\\)"):
        local.items("absent", ["en"], {"en"}, ErrorPolicy())
    assert item.source == "local:rec/en/a.wav"  # as configured: the same manifest bytes in both places


def test_transcripts_without_audio_are_said_and_a_folder_of_only_them_has_no_audio(tmp_path, caplog):
    """Regression: a transcript whose clip was not copied was ignored without a word, and a folder of
    transcripts only gave no item and no message."""
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "a.txt").write_text("the clip of this transcript was not copied")
    with caplog.at_level("INFO"), pytest.raises(local.AudioInputError, match="no audio files in the folder"):
        local.from_folder(tmp_path, ["en"], {"en"}, ErrorPolicy())
    assert (
        f"{tmp_path}: 1 transcript(s) with no audio beside them, e.g. {tmp_path / 'en' / 'a'}.txt"
        in caplog.text
    )
    write_tone(tmp_path / "en" / "b.wav")
    (tmp_path / "en" / "b.txt").write_text("this one has its clip")
    assert [it.text for it in local.from_folder(tmp_path, ["en"], {"en"}, ErrorPolicy())] == [
        "this one has its clip"
    ]


def test_an_upper_case_txt_transcript_is_read_and_a_lower_case_one_wins(tmp_path):
    """Regression: x.wav beside x.TXT (as Windows tools save it) was 'transcript x.txt is missing'."""
    write_tone(tmp_path / "en" / "a.wav")
    (tmp_path / "en" / "a.TXT").write_text("written by a windows tool")
    write_tone(tmp_path / "en" / "b.wav")
    (tmp_path / "en" / "b.TXT").write_text("the upper case copy")
    (tmp_path / "en" / "b.txt").write_text("the lower case one")
    items = local.from_folder(tmp_path, ["en"], {"en"}, ErrorPolicy("fail"))
    assert [it.text for it in items] == ["written by a windows tool", "the lower case one"]


def test_csv_rows_excel_and_editors_write_are_read_or_named_never_cut(tmp_path):
    """Regression (a review): an unquoted comma cut a transcript at it ("Hallo, hoe gaat het" read as
    "Hallo"); a quote left open swallowed every later row into one transcript; Excel's empty rows
    (",,") were bad items; a language written as a name or in capitals was "not one Whisper knows"."""
    write_audio(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "audio,language,text\n"
        "spk1/001.wav,en,Hallo, hoe gaat het\n"
        ",,\n"
        'spk2/001.wav,EN,"quoted, with a comma"\n'
        'spk2/my take.wav,English,"Moby Dick" is a novel\n'
    )
    policy = ErrorPolicy()
    got = local.from_manifest(manifest, policy, ["en"], {"en", "nl"})
    assert [(it.id, it.language, it.text) for it in got] == [
        (IDS[1], "en", "quoted, with a comma"),
        (IDS[2], "en", "Moby Dick is a novel"),  # text after a closing quote: read, as always
    ]
    (skipped,) = policy.skipped
    assert skipped["cause"].startswith(f"{manifest}:2: 4 fields for the header's 3 columns; put a field")
    manifest.write_text('audio,language,text\nspk1/001.wav,en,"Go\nspk2/001.wav,en,second\n')
    with pytest.raises(
        local.AudioInputError, match=rf"^{manifest}:2: a double quote opened in this row is never"
    ):
        local.from_manifest(manifest, ErrorPolicy())


def test_jsonl_keys_and_folder_names_in_any_case_and_hidden_files_skipped(tmp_path):
    """Regression (a review): {"Audio": ...} rows had "no 'audio'"; a folder DE/ under a source of [nl]
    was labelled nl without a word; a source folder named hi/ made every clip directly in it Hindi;
    macOS's ._x.wav / ._x.txt beside x.wav became clips of NUL bytes."""
    write_audio(tmp_path)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({k.title(): v for k, v in r.items()}) + "\n" for r in ROWS))
    assert [it.id for it in local.from_manifest(manifest, ErrorPolicy("fail"))] == IDS
    source = tmp_path / "hi"
    for rel, text in (("a.wav", "in the source folder"), ("DE/b.wav", "ein deutscher Satz")):
        write_tone(source / rel)
        (source / rel).with_suffix(".txt").write_text(text)
    (source / "._a.wav").write_bytes(b"\0" * 64)
    (source / "._a.txt").write_bytes(b"\0" * 64)
    policy = ErrorPolicy()
    got = local.items(str(source), ["en"], {"en", "de", "hi"}, policy)
    assert [(it.language, it.text) for it in got] == [("en", "in the source folder")]
    assert [s["language"] for s in policy.skipped] == ["de"]
    policy = ErrorPolicy()
    got = local.items(str(source), ["en", "de"], {"en", "de", "hi"}, policy)
    assert [(it.language, it.text) for it in got] == [("de", "ein deutscher Satz")]
    (skipped,) = policy.skipped
    assert skipped["cause"].startswith(f"{source / 'a.wav'}: cannot tell the language; put it in a folder")
    # a folder named like a language code in capitals (UK/ for British English) says how it was read
    write_tone(tmp_path / "en_clips" / "UK" / "c.wav")
    (tmp_path / "en_clips" / "UK" / "c.txt").write_text("a british clip")
    with pytest.raises(
        local.AudioInputError, match=r"c\.wav: language uk \(from its folder UK/: ukrainian\)"
    ):
        local.items(str(tmp_path / "en_clips"), ["en"], {"en", "uk"}, ErrorPolicy("fail"))


def test_paths_that_name_one_id_get_distinct_ids(tmp_path):
    """Regression (a review): `take 1.wav` and `take-1.wav` (or x.wav and x.flac) in one source gave
    one id, so the second clip was dropped as a duplicate, with a hint about two sources."""
    for name, text in (("take 1.wav", "first take"), ("take-1.wav", "second take"), ("solo.wav", "alone")):
        write_tone(tmp_path / name)
        (tmp_path / name).with_suffix(".txt").write_text(text)
    got = {it.text: it.id for it in local.items(str(tmp_path), ["en"], {"en"}, ErrorPolicy("fail"))}
    assert got["alone"] == "en-local-solo" and len(set(got.values())) == 3
    assert all(ID_RE.fullmatch(i) and i.startswith("en-local-take-1-") for t, i in got.items() if "take" in t)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "audio,language,text\ntake 1.wav,en,first\ntake-1.wav,en,second\ntake 1.wav,en,again\n"
    )
    ids = [it.id for it in local.from_manifest(manifest, ErrorPolicy("fail"))]
    assert ids[0] == ids[2] != ids[1]  # the same path twice stays one id: a duplicate, refused later
    assert ids == [it.id for it in local.from_manifest(manifest, ErrorPolicy("fail"))]  # the same every run


def test_csv_cells_typed_after_a_comma_and_space_are_read_like_the_header(tmp_path):
    """Regression: the header " text, audio" was read, but a row's " a.wav" was a file not found and
    ', "Hallo, daar"' two fields (the message asked to quote the already quoted transcript)."""
    write_tone(tmp_path / "a.wav")
    write_tone(tmp_path / "b.wav", 500)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        'text, audio, language, id\n"Hallo, daar", a.wav, nl, one\ngoede dag, b.wav, nl, two\n'
    )
    policy = ErrorPolicy("fail")
    items = local.from_manifest(manifest, policy, ["nl"], {"nl"})
    assert [(it.id, it.text) for it in items] == [("one", "Hallo, daar"), ("two", "goede dag")]
    assert [len(it.load()) for it in items] == [16000, 16000]


@pytest.mark.parametrize(("tag", "code"), [("en-US", "en"), ("pt_BR", "pt"), ("zh-Hans-CN", "zh")])
def test_a_locale_tag_is_refused_with_the_code_to_write(tmp_path, tag, code):
    """Common Voice and FLEURS name languages by locale ("en-US", "nl_nl"): the message said only "not
    one Whisper knows", though the language is one; it now says which code to write."""
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"audio,text,language\na.wav,hello there,{tag}\nb.wav,hi there,xx-YY\n")
    policy = ErrorPolicy()
    assert local.from_manifest(manifest, policy, None, {"en", "pt", "zh"}) == []
    causes = [s["cause"] for s in policy.skipped]
    assert causes[0].endswith(f"language {tag!r} is not one Whisper knows (a code or a name); Whisper's "
                              f"codes name no region or script: write {code}")  # fmt: skip
    assert causes[1].endswith("language 'xx-YY' is not one Whisper knows (a code or a name)")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_utf16_manifest_is_refused_as_not_utf8(tmp_path, suffix):
    """Regression: a manifest PowerShell's ``>`` wrote (UTF-16) was a header of garbled characters (CSV)
    or one "not valid JSON" per line (JSONL), never naming the encoding."""
    manifest = tmp_path / f"manifest{suffix}"
    text = (
        "audio,text,language\na.wav,hello there,en\n"
        if suffix == ".csv"
        else json.dumps({"audio": "a.wav", "text": "hello there", "language": "en"}) + "\n"
    )
    manifest.write_text(text, encoding="utf-16")
    with pytest.raises(local.AudioInputError, match=r"UTF-16 text, not UTF-8; save the manifest as UTF-8"):
        local.from_manifest(manifest, ErrorPolicy(), None, {"en"})


@pytest.mark.parametrize(("on_disk", "typed"), [("NFD", "NFC"), ("NFC", "NFD")])
def test_a_manifest_finds_a_file_whose_name_is_in_the_other_unicode_form(tmp_path, on_disk, typed):
    """Regression: "één café.wav" copied from a Mac (decomposed accents) and typed in the manifest
    (composed) was "audio file not found", naming a path that prints as the file's own name."""
    name = "één café.wav"
    write_tone(tmp_path / unicodedata.normalize(on_disk, name))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"audio,text,language\n{unicodedata.normalize(typed, name)},hallo daar,nl\n")
    (item,) = local.from_manifest(manifest, ErrorPolicy("fail"), ["nl"], {"nl"})
    assert len(item.load()) == 16000
    assert item.source == f"local:{tmp_path / unicodedata.normalize(typed, name)}"  # as typed


def test_a_manifest_written_on_windows_finds_its_files(tmp_path):
    """Regression (a review): ``clips\\a.wav``, as a manifest written on Windows names a file, was
    "audio file not found" here, where ``\\`` is a character of a name; it is the separator when no
    file has it in its name, and the id is the one ``clips/a.wav`` gives."""
    write_tone(tmp_path / "clips" / "a.wav")
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(b"audio,text,language\r\nclips\\a.wav,hallo daar,nl\r\n")
    (item,) = local.from_manifest(manifest, ErrorPolicy("fail"), ["nl"], {"nl"})
    assert len(item.load()) == 16000
    assert item.id == "nl-local-clips-a"


def test_a_symlinked_manifest_finds_its_rows_beside_the_file_it_leads_to(tmp_path):
    """Regression: `ln -s /datasets/calls/manifest.jsonl data/` looked for the rows' files in data/."""
    dataset = tmp_path / "datasets" / "calls"
    write_audio(dataset)
    (dataset / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "data").mkdir()
    link = tmp_path / "data" / "manifest.jsonl"
    link.symlink_to(dataset / "manifest.jsonl")
    items = local.from_manifest(link, ErrorPolicy("fail"))
    assert [it.id for it in items] == IDS
    assert all(len(it.load()) == 16000 for it in items)  # read, not "audio file not found"


def test_a_symlinked_manifest_reads_files_beside_the_link_first(tmp_path):
    """DVC's symlink cache links a tracked folder's manifest and its audio: the link's folder wins."""
    cache, work = tmp_path / "cache", tmp_path / "work"
    for row in ROWS:
        write_tone(cache / row["audio"], seconds=2.0)  # the link's folder must win: told apart by length
        write_tone(work / row["audio"], seconds=1.0)
    (cache / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (work / "m.jsonl").symlink_to(cache / "m.jsonl")
    items = local.from_manifest(work / "m.jsonl", ErrorPolicy("fail"))
    assert [len(it.load()) for it in items] == [16000] * len(ROWS)
