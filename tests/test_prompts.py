from vincie_cli.prompts import (
    DEFAULT_NEGATIVE_PROMPT,
    TurnSpec,
    edit_text,
    is_official_negative,
    plan_session,
)


def test_released_template_exact():
    assert edit_text(0, 1, "Remove the hat. ") == "Based on <IMG0>, Remove the hat. Output <IMG1>: "
    # the camera prefix lands after "Based on <IMGi>, " and before the instruction
    assert edit_text(2, 3, "pan left", camera_prefix="[###CAMERA: None###] ").startswith(
        "Based on <IMG2>, [###CAMERA: None###] pan left. Output <IMG3>: "
    )
    assert edit_text(0, 1, "raw text", template=False) == "raw text"


def test_plan_plain_session_matches_released_rounds():
    frames, steps = plan_session([TurnSpec("a"), TurnSpec("b"), TurnSpec("c")])
    assert [f.role for f in frames] == ["image"] * 4
    assert [s.text for s in steps] == [
        "Based on <IMG0>, a. Output <IMG1>: ",
        "Based on <IMG1>, b. Output <IMG2>: ",
        "Based on <IMG2>, c. Output <IMG3>: ",
    ]
    assert [s.target for s in steps] == [1, 2, 3]


def test_plan_chain_of_editing_numbers_every_frame():
    frames, steps = plan_session([TurnSpec("add a cat", src_mask=True, dst_mask=True), TurnSpec("make it pink")])
    assert [f.role for f in frames] == ["image", "mask_src", "mask_dst", "image", "image"]
    assert [s.task for s in steps] == ["csp", "nsp", "nip", "nip"]
    assert steps[2].text == "Based on <IMG0>, add a cat. Output <IMG3>: "
    assert steps[3].text == "Based on <IMG3>, make it pink. Output <IMG4>: "
    assert all(s.target == i + 1 for i, s in enumerate(steps))
    assert "<IMG0>" in steps[0].text and steps[0].text.endswith("Output <IMG1>: ")


def test_plan_composition_labels_inputs():
    frames, steps = plan_session([TurnSpec("a cat and a dog on a sofa")], num_inputs=3)
    assert [s.text for s in steps] == [
        "<IMG1>: ",
        "<IMG2>: ",
        "Based on <IMG0>, <IMG1>, <IMG2>, a cat and a dog on a sofa. Output <IMG3>: ",
    ]
    assert len(frames) == 4


def test_negative_prompt_is_ours():
    assert not is_official_negative(DEFAULT_NEGATIVE_PROMPT)
