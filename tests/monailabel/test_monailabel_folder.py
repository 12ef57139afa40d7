"""The MONAI Label app on a local-folder datastore (a NIfTI CT and a PNG X-ray): every task (frozen_projection's
nearest reports too) answers what the bundle CLI writes for the same file, bad requests get a clear 4xx, and 8
concurrent requests all answer."""

from __future__ import annotations

import shutil

import pytest
from serving import assert_neighbours_equal, assert_probabilities_equal, cli_output, run_chain, server_conf

pytestmark = [pytest.mark.slow, pytest.mark.monailabel]

CT_ID = "synth_0000"  # the first demo volume
OPEN_VOCABULARY = ["Emphysema", "Lung nodule", "Pericardial effusion"]


@pytest.fixture(scope="module")
def folder_chain(tmp_path_factory, monailabel_bin, demo_bundles):
    studies = tmp_path_factory.mktemp("studies")
    ct = demo_bundles["ctclip_lora"] / "demo_data" / "volumes" / f"{CT_ID}.nii.gz"
    xray = sorted((demo_bundles["cleft_cxr"] / "demo_data").rglob("*.png"))[0]
    shutil.copy(ct, studies / ct.name)  # its name is its row in the demo's HU metadata.csv
    shutil.copy(xray, studies / "chest_xray.png")
    work = tmp_path_factory.mktemp("folder_chain")
    plan = {
        "monailabel": str(monailabel_bin),
        "studies": str(studies),
        "server_env": {"HOME": str(work / "home")},
        "conf": server_conf(demo_bundles),
        "requests": {
            "ct": {"task": "ctclip_lora", "image": CT_ID},
            "ct_open": {"task": "ctclip_lora", "image": CT_ID, "params": {"class_names": OPEN_VOCABULARY}},
            "ct_open_again": {"task": "ctclip_lora", "image": CT_ID, "params": {"class_names": OPEN_VOCABULARY}},
            "xray": {"task": "cleft_cxr", "image": "chest_xray"},
            "xray_labels": {"task": "cleft_cxr", "image": "chest_xray", "params": {"class_names": ["Edema", "Normal"]}},
            "report": {"task": "report_gen", "image": "chest_xray"},
            "retrieval": {"task": "frozen_projection", "image": "chest_xray"},
            "retrieval_top_2": {"task": "frozen_projection", "image": "chest_xray", "params": {"retrieval_top_k": 2}},
            "unknown_task": {"task": "segmentation_spleen", "image": CT_ID},
            "unknown_image": {"task": "ctclip_lora", "image": "no_such_image"},
            "empty_classes": {"task": "ctclip_lora", "image": CT_ID, "params": {"class_names": []}},
            "duplicated_classes": {"task": "cleft_cxr", "image": "chest_xray", "params": {"class_names": ["A", "A"]}},
            "xray_to_ct_task": {"task": "ctclip_lora", "image": "chest_xray"},
            "bad_top_k": {"task": "frozen_projection", "image": "chest_xray", "params": {"retrieval_top_k": 0}},
            "after_errors": {"task": "cleft_cxr", "image": "chest_xray"},
        },
        "concurrent": {"task": "cleft_cxr", "image": "chest_xray"},
    }
    results = run_chain(plan, work)
    return results, studies / ct.name


def test_info_lists_every_task(folder_chain):
    results, _ = folder_chain
    assert set(results["info"]["models"]) == {"ctclip_lora", "cleft_cxr", "report_gen", "frozen_projection"}
    assert results["info"]["models"]["ctclip_lora"]["type"] == "classification"
    assert set(results["datastore"]["objects"]) == {CT_ID, "chest_xray"}


def test_served_results_equal_the_bundle_cli(folder_chain, demo_bundles, tmp_path):
    results, ct = folder_chain
    for name in ("ct", "ct_open", "ct_open_again", "xray", "xray_labels", "report", "retrieval", "retrieval_top_2"):
        assert results["requests"][name]["status"] == 200, (name, results["requests"][name])
    answers = {name: r["answer"] for name, r in results["requests"].items()}
    ct, xray = str(ct), str(ct.parent / "chest_xray.png")
    assert_probabilities_equal(
        answers["ct"], cli_output("ctclip_lora", demo_bundles["ctclip_lora"], ct, tmp_path / "a")
    )
    open_cli = cli_output("ctclip_lora", demo_bundles["ctclip_lora"], ct, tmp_path / "b", OPEN_VOCABULARY)
    assert_probabilities_equal(answers["ct_open"], open_cli)
    assert answers["ct_open_again"]["probabilities"] == answers["ct_open"]["probabilities"]  # cached prompt latents
    assert_probabilities_equal(
        answers["xray"], cli_output("cleft_cxr", demo_bundles["cleft_cxr"], xray, tmp_path / "c")
    )
    labels_cli = cli_output("cleft_cxr", demo_bundles["cleft_cxr"], xray, tmp_path / "d", ["Edema", "Normal"])
    assert_probabilities_equal(answers["xray_labels"], labels_cli)
    report_cli = cli_output("report_gen", demo_bundles["report_gen"], xray, tmp_path / "e")
    assert {k: answers["report"][k] for k in report_cli} == report_cli  # id, generated text, (empty) reference
    retrieval_cli = cli_output("frozen_projection", demo_bundles["frozen_projection"], xray, tmp_path / "f")
    assert (answers["retrieval"]["id"], answers["retrieval"]["top_k"]) == ("chest_xray.png", 5)
    assert answers["retrieval"]["retrieval_manifest"] == retrieval_cli["retrieval_manifest"]
    assert_neighbours_equal(answers["retrieval"], retrieval_cli)
    assert answers["retrieval_top_2"]["neighbours"] == answers["retrieval"]["neighbours"][:2]


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(folder_chain):
    requests = folder_chain[0]["requests"]
    expected = {"unknown_task": (404, "unknown task"), "unknown_image": (404, "unknown image id"),
                "empty_classes": (422, "is empty"), "duplicated_classes": (422, "more than once"),
                "xray_to_ct_task": (422, "ctclip_lora cannot serve image 'chest_xray'"),
                "bad_top_k": (422, "'retrieval_top_k' must be at least 1")}  # fmt: skip
    for name, (status, words) in expected.items():
        assert requests[name]["status"] == status, (name, requests[name])
        assert words in requests[name]["answer"]["detail"], (name, requests[name])
    assert requests["after_errors"]["status"] == 200
    assert requests["after_errors"]["answer"]["probabilities"] == requests["xray"]["answer"]["probabilities"]


def test_eight_concurrent_requests_all_answer(folder_chain):
    results = folder_chain[0]
    assert [r["status"] for r in results["concurrent"]] == [200] * 8
    first = results["requests"]["xray"]["answer"]["probabilities"]
    assert all(r["answer"]["probabilities"] == first for r in results["concurrent"])
