"""``chexnet predict``, ``serve``, ``export`` and ``demo``: a trained run put to use."""

from __future__ import annotations

from chexnet.choices import FILE_TTA_MODES, TTA_HELP, help_text
from chexnet.data.imageio import DEFAULT_MAX_PIXELS


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="probabilities, findings and heatmaps for X-ray files (PNG, JPEG, TIFF, DICOM)",
                       description="Predict the 14 pathologies for image files or folders (recursive) with a run's "
                       "checkpoint (torch) or an exported ONNX model (--onnx; no torch needed). Each file is "
                       "preprocessed exactly as in training. A bad file is reported and the others go on; the exit "
                       "status is 1 when any file failed. DICOM header values (patient name, ID, dates) are never "
                       "printed or written.",
                       usage="chexnet predict RUN PATH... [options]\n       chexnet predict --onnx FILE PATH... [options]")
    p.add_argument("paths", nargs="+", metavar="RUN PATH", help="a run directory, then image files or folders "
                   "(with --onnx: image files or folders only)")
    p.add_argument("--onnx", default=None, metavar="FILE", help="use this exported model instead of a run (onnxruntime)")
    p.add_argument("--checkpoint", default="best", help="best | last | PATH (default best)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table",
                   help="table (default), json (one object per line: path, probabilities, findings, error) or csv")
    p.add_argument("--threshold", default="val", help="'val': the thresholds chexnet evaluate chose on the validation "
                   "split for this checkpoint (default; 0.5 where there are none, said on stderr), or a number such as 0.5")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tta", choices=list(FILE_TTA_MODES), default="none",
                   help="test-time augmentation: " + help_text(TTA_HELP, FILE_TTA_MODES))
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this, from the header, before decoding (default 100 megapixels)")
    p.add_argument("--cam", default=None, metavar="OUTDIR", help="write Grad-CAM heatmaps (PNG overlay at the image's size "
                   "+ raw .npy) for each finding above threshold (needs chexnet[cam]; not with --onnx)")
    p.add_argument("--cam-all", action="store_true", help="heatmaps for all 14 findings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="an HTTP inference service with a web viewer (FastAPI on uvicorn)",
                       description="Serve a run (torch; heatmaps too) or an exported ONNX model over HTTP: POST "
                       "/v1/predict (multipart 'file': the JSON of chexnet predict --format json), POST "
                       "/v1/heatmap?finding=NAME (Grad-CAM PNG), POST /v1/image (the decoded X-ray as PNG), GET "
                       "/v1/model, /healthz, /readyz, /metrics (Prometheus) and a viewer at /. Concurrent requests "
                       "share forward passes (--max-batch, --max-wait-ms). Uploads stay in memory; DICOM identifiers are never returned or logged; logs "
                       "hold request id, size, status and latency. Binds to 127.0.0.1 unless --host says otherwise: "
                       "beyond this machine, put a TLS reverse proxy in front and use --token-file. SIGTERM finishes "
                       "the requests in flight and exits 0. Needs chexnet[serve].",
                       usage="chexnet serve RUN|MODEL.onnx [options]")
    p.add_argument("model", metavar="RUN|MODEL.onnx", help="a run directory (chexnet train --out) or an exported .onnx file")
    p.add_argument("--checkpoint", default="best", help="run directories: best | last | PATH (default best)")
    p.add_argument("--threshold", default="val", help="'val': the model's validation thresholds (default), or a number")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--max-batch", type=int, default=16, help="most images in one forward pass (default 16; 1 turns "
                   "batching off)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="longest a request waits for others to share its "
                   "forward pass (default 10)")
    p.add_argument("--token-file", default=None, metavar="FILE", help="require 'Authorization: Bearer <token>' on "
                   "/v1/* (the file's first line, 16+ characters); /healthz, /readyz and /metrics stay open")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest request body, MiB (default 50; 413 over it)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this, from the header, before decoding (default 100 megapixels)")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own model and batcher "
                   "(default 1; the cores are shared between them)")
    g = p.add_argument_group("slow and hostile clients", "limits that keep a server answering while some clients "
                             "send a few bytes at a time or too much at once; each is per worker process")
    g.add_argument("--header-timeout", type=float, default=10.0, metavar="S", help="the request line and headers "
                   "must arrive within S seconds (default 10); else 408 and the connection closes (one that sends "
                   "nothing just closes). Idle kept-alive connections close after 5 s")
    g.add_argument("--body-timeout", type=float, default=60.0, metavar="S", help="an upload's body must arrive "
                   "within S seconds of its headers (default 60); else 408. Raise it for slow links")
    g.add_argument("--max-header-kb", type=int, default=16, metavar="KB", help="largest request line + headers, "
                   "KiB (default 16); 431 over it, refused before more is buffered")
    g.add_argument("--max-uploads", type=int, default=32, metavar="N", help="uploads read or decoded at once "
                   "(default 32; each holds up to --max-upload-mb in memory); 503 with Retry-After over it")
    g.add_argument("--max-queue", type=int, default=128, metavar="N", help="decoded images waiting for a forward "
                   "pass (default 128); 503 with Retry-After over it")
    g.add_argument("--max-connections", type=int, default=512, metavar="N", help="open connections and requests in "
                   "progress (uvicorn's limit_concurrency; default 512); requests beyond it get 503 with Retry-After")


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a run's model to ONNX with its preprocessing contract and labels",
                       description="Write a single ONNX file that takes uint8 cache rows (batch, 1, S, S) and returns the "
                       "14 probabilities, with the preprocessing spec, labels and validation thresholds in its metadata. "
                       "The file is checked against torch (to 1e-4) before it is kept. --quantize int8: a static int8 "
                       "model (QDQ, calibrated on the run's train images), checked against fp32 on the val split "
                       "(AUROC change, max |dp|). Needs chexnet[export].")
    p.add_argument("run", help="run directory")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", default=None, help="output file (default RUN/export/model.onnx; with --quantize int8 "
                   "RUN/export/model.int8.onnx)")
    p.add_argument("--checkpoint", default="best", help="best | last | PATH (default best)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: batch 1)")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: static int8 quantization (onnxruntime QDQ, per-channel weights; convolutions and "
                   "matrix products): about 4x smaller, 1.5-2x faster on an AVX2 CPU (more with VNNI)")
    p.add_argument("--calibration-images", type=int, default=64, metavar="N",
                   help="with --quantize int8: train images (a seeded draw) to calibrate activation ranges on (default 64)")
    p.add_argument("--cache", default=None, help="with --quantize int8: the cache to draw calibration (train) and "
                   "check (val) images from (default: the run's training cache, recorded in run.json)")
    p.add_argument("--seed", type=int, default=0, help="with --quantize int8: seed of the calibration draw (default 0)")


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole cycle on a small synthetic set: train, evaluate, predict, heatmaps, export",
                       description="End to end on a small synthetic set: synth, prepare, train with 2 workers, a "
                       "per-pathology validation/test AUROC table, calibrate (temperature scaling; the mean ECE before "
                       "and after, and test sensitivity at the thresholds chosen for 0.9 on val), then predict with "
                       "Grad-CAM heatmaps, localize "
                       "against the synthetic boxes, export to ONNX and predict with it (those steps need the cam and "
                       "export extras), then external validation on a synthetic second site in CheXpert's layout (the cross-dataset "
                       "AUROC table), and last a model card (MODEL_CARD.md, model_card.json). 4-12 minutes on 2 CPU "
                       "cores; run again, it resumes.")
    p.add_argument("--out", default="demo", help="working folder (default ./demo)")
    p.add_argument("--images", type=int, default=None, help="synthetic images (default from the demo recipe)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default from the demo recipe)")
    p.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")


def cmd_predict(args) -> int:
    from chexnet.predict import run_predict

    if args.onnx:
        run, paths = None, args.paths
    else:
        run, paths = args.paths[0], args.paths[1:]
        if not paths:
            raise ValueError("give a run directory and at least one image file or folder (or --onnx FILE PATH...)")
    failed = run_predict(run, paths, onnx=args.onnx, checkpoint=args.checkpoint, fmt=args.format,
                         threshold=args.threshold, batch_size=args.batch_size, tta=args.tta,
                         max_pixels=args.max_pixels, cam_dir=args.cam, cam_all=args.cam_all,
                         progress=not args.no_progress, trust_changed=args.trust_changed, raw=args.raw,
                         operating_point=args.operating_point)
    return 1 if failed else 0


def cmd_serve(args) -> int:
    from chexnet.predict import parse_threshold
    from chexnet.serve import serve
    from chexnet.serve.config import ServeConfig

    return serve(ServeConfig(
        model=args.model, checkpoint=args.checkpoint, threshold=parse_threshold(args.threshold), host=args.host,
        port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, token_file=args.token_file,
        max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, workers=args.workers,
        trust_changed=args.trust_changed, header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
        max_header_kb=args.max_header_kb, max_uploads=args.max_uploads, max_queue=args.max_queue,
        max_connections=args.max_connections, raw=args.raw, operating_point=args.operating_point))


def cmd_export(args) -> int:
    from chexnet.export import export_onnx

    export_onnx(args.run, args.checkpoint, args.out, args.opset, args.dynamic_batch, trust_changed=args.trust_changed,
                raw=args.raw, quantize=args.quantize, calibration_images=args.calibration_images, cache=args.cache,
                seed=args.seed)
    return 0


def cmd_demo(args) -> int:
    from chexnet.demo import run_demo

    run_demo(args.out, images=args.images, epochs=args.epochs, nproc=args.nproc)
    return 0
