#!/usr/bin/env bash
# End-to-end tests of cfx-viz on a small checkpoint made by cfx-train.
#
#   run     train 1 epoch on 512 images, cfx-train --eval the checkpoint, run
#           cfx-viz; every listed file is written, PNGs have the expected size
#           and are not blank, the confusion matrix sums to the test-set size
#           and its diagonal share equals the accuracy --eval printed
#   report  report.html in headless Chromium: the page renders (a screenshot
#           that is not blank) and every <img> loads (naturalWidth > 0)
#   residual  the same for a small ResNet (CONFIG is tests/small_resnet.ini):
#           every layer's feature maps, Grad-CAM on the last block's output by
#           default and on any named layer with --layer, the sanity check
#           re-initialising BatchNorm layers too
#   explorer  explorer.html's files (20 thumbnail sheets, 100 detail images),
#           then a browser test (tests/explorer, puppeteer-core in Chromium)
#           clicks through it and a comparison's; the count of misclassified
#           cats and each prediction and probability it showed equal analysis.h5's
#   errors  missing, damaged and mismatched files, bad --images, an
#           unwritable output directory: one line on stderr, non-zero exit;
#           --format svg and pdf write those formats
#
# usage: viz_test.sh MODE CFX_TRAIN CFX_VIZ VIZ_CHECK CONFIG DATA_DIR WORK_DIR -- MPIEXEC ARGS...
# (report and errors use the run directory that `run` leaves in WORK_DIR/run)
set -euo pipefail
mode=$1 train=$2 viz=$3 check=$4 config=$5 data=$6 work=$7
shift 8
mpiexec=("$@")
run=$work/run

fail() {
    echo "FAIL: $*"
    exit 1
}

train_run() { # train_run OUTPUT_DIR [--set ...]: 1 epoch on a small subset
    local out=$1
    shift
    "${mpiexec[@]}" 1 "$train" --config "$config" --quiet --set data.dir="$data" \
        --set output.dir="$out" --set train.epochs=1 --set data.train_limit=512 \
        --set data.val_limit=500 "$@"
}

# The figures of the seed architecture for --images 0,1,2, with their sizes.
expected_pngs=(
    "plots/loss_curves.png 760 500"
    "plots/accuracies.png 760 500"
    "plots/confusion_matrix.png 767 710"
    "plots/per_class.png 960 520"
    "plots/misclassified_examples.png 1036 556"
    "plots/confusion_pairs.png 1232 839"
    "plots/conv1_filters.png 728 292"
    "plots/saliency.png 797 626"
    "plots/gradcam.png 797 626"
    "plots/integrated_gradients.png 975 626"
    "plots/smoothgrad.png 975 626"
    "plots/occlusion.png 797 626"
    "plots/guided_backprop.png 975 626"
    "plots/guided_gradcam.png 1153 626"
    "plots/sanity_randomization.png 760 1170"
    "plots/channels_0.png 640 668"
    "plots/channels_3.png 774 952"
    "plots/channels_6.png 1026 1236"
    "plots/activation_maximization.png 752 422"
    "plots/embedding.png 900 640"
    "featuremaps/layer_00_Conv2d.png 600 282"
    "featuremaps/layer_01_ReLU.png 600 282"
    "featuremaps/layer_02_MaxPool2d.png 600 282"
    "featuremaps/layer_03_Conv2d.png 1160 282"
    "featuremaps/layer_04_ReLU.png 1160 282"
    "featuremaps/layer_05_MaxPool2d.png 1160 282"
    "featuremaps/layer_06_Conv2d.png 1160 452"
    "featuremaps/layer_07_ReLU.png 1160 452"
    "featuremaps/layer_08_MaxPool2d.png 1160 452"
)

case $mode in
run)
    rm -rf "$work"
    mkdir -p "$work"
    train_run "$run"
    eval_out=$("${mpiexec[@]}" 1 "$train" --config "$config" --set data.dir="$data" \
        --eval "$run/checkpoints/best.h5")
    acc=$(sed -n 's/.*test accuracy \([0-9.]*\) (\([0-9]*\) images).*/\1/p' <<< "$eval_out")
    n=$(sed -n 's/.*test accuracy \([0-9.]*\) (\([0-9]*\) images).*/\2/p' <<< "$eval_out")
    if [ -z "$acc" ] || [ -z "$n" ]; then
        fail "no test accuracy in cfx-train --eval output: $eval_out"
    fi
    echo "cfx-train --eval: test accuracy $acc on $n images"
    grep -q "images), no TTA$" <<< "$eval_out" ||
        fail "cfx-train --eval without TTA does not say so: $eval_out"
    tta_out=$("${mpiexec[@]}" 1 "$train" --config "$config" --set data.dir="$data" \
        --set train.tta=flip_translate --eval "$run/checkpoints/best.h5")
    grep -q "images), TTA flip_translate (6 views)$" <<< "$tta_out" ||
        fail "cfx-train --eval with train.tta=flip_translate does not say so: $tta_out"

    "$viz" --run "$run" --images 0,1,2 | tee "$work/viz.out"
    grep -Eq "^cfx-viz: 29 figures, .* in [0-9.]+ s \(" "$work/viz.out" ||
        fail "cfx-viz did not print its figure count and timing"
    grep -q "^sanity check: Spearman" "$work/viz.out" || fail "no sanity-check correlations printed"

    for f in per_class.csv analysis.h5 report.html explorer.html explorer/index.js; do
        [ -s "$run/$f" ] || fail "$run/$f not written"
    done
    for e in "${expected_pngs[@]}"; do
        read -r f w h <<< "$e"
        [ -s "$run/$f" ] || fail "$run/$f not written"
        "$check" png "$run/$f" "$w" "$h" || fail "$run/$f"
    done
    pngs=$(find "$run/plots" "$run/featuremaps" -name '*.png' | wc -l)
    [ "$pngs" -eq "${#expected_pngs[@]}" ] ||
        fail "$pngs PNG files under plots/ and featuremaps/, expected ${#expected_pngs[@]}"
    [ "$(head -1 "$run/per_class.csv")" = "class,precision,recall,f1,support" ] ||
        fail "per_class.csv header"
    [ "$(wc -l < "$run/per_class.csv")" -eq 11 ] || fail "per_class.csv has not 10 classes"
    "$check" confusion "$run/analysis.h5" "$n" "$acc" || fail "confusion matrix vs --eval"
    for d in /test/probabilities /per_class/f1 /sanity/saliency_spearman /sanity/gradcam_spearman \
        /images/saliency /images/gradcam /images/integrated_gradients /images/smoothgrad \
        /images/occlusion /images/guided_backprop /images/guided_gradcam \
        /images/integrated_gradients_attributions /images/integrated_gradients_completeness \
        /sanity/occlusion_spearman /sanity/guided_gradcam_maps /channels/0/top_images \
        /channels/6/top_values /embedding/pca; do
        h5dump -H -d "$d" "$run/analysis.h5" > /dev/null || fail "analysis.h5 has no $d"
    done
    echo "ok: cfx-viz wrote every file"
    ;;

residual)
    out=$work/resnet
    rm -rf "$out"
    train_run "$out"
    # (explorer.html has its own test: a few detail images here)
    "$viz" --run "$out" --images 0,1,2 --explorer-images 8 | tee "$work/viz-resnet.out"
    # 15 plots, 6 channel grids (one per conv2d), activation maximisation, the
    # embedding and the 20 layers with spatial outputs (conv1 ... the global average pool)
    grep -Eq "^cfx-viz: 43 figures," "$work/viz-resnet.out" || fail "cfx-viz figure count"
    for f in featuremaps/layer_08_Add.png featuremaps/layer_16_BatchNorm2d.png \
        featuremaps/layer_19_AdaptiveAvgPool2d.png plots/gradcam.png; do
        "$check" png-min "$out/$f" 400 150 || fail "$out/$f"
    done
    cam_layer() { h5dump -a /images/gradcam/layer "$out/analysis.h5" | sed -n 's/^ *(0): //p'; }
    [ "$(cam_layer)" = 18 ] || fail "default Grad-CAM layer $(cam_layer), expected 18 (layer2.0)"
    grep -q "layer2.0.downsample.1 BatchNorm2d" "$work/viz-resnet.out" ||
        fail "the sanity check did not re-initialise layer2.0.downsample.1"
    "$viz" --quiet --run "$out" --images 0,1,2 --layer layer1.0.bn2 --explorer-images 0
    [ "$(cam_layer)" = 7 ] || fail "--layer layer1.0.bn2: Grad-CAM layer $(cam_layer), expected 7"
    echo "ok: cfx-viz draws the residual network"

    # A layer list longer than 2,048 characters is stored whole in checkpoints.
    long="conv2d out=4 kernel=3 padding=1; maxpool2d kernel=8; flatten; linear out=10"
    for i in $(seq 1 150); do long="$long; gelu name=activation_$i"; done
    long="$long; linear out=10"
    train_run "$work/long" --set "model.layers=$long" --set data.train_limit=64
    h5dump -a /layers "$work/long/checkpoints/last.h5" > "$work/long.attr"
    stored=$(grep -o 'activation_[0-9]*' "$work/long.attr" | sort -u | wc -l)
    [ "$stored" -eq 150 ] || fail "the checkpoint's layers attribute holds $stored of 150 layers"
    "$viz" --quiet --run "$work/long" --images 0 --explorer-images 8 ||
        fail "cfx-viz on a 153-layer model"
    echo "ok: a ${#long}-character layer list is stored whole"

    # Two architectures side by side: the residual network and the long one.
    "$viz" --compare "$out" "$work/long" --out "$work/compare" --images 0,1 --ig-steps 4 \
        --smoothgrad-samples 2 --actmax-steps 8 --explorer-images 8 | tee "$work/cmp.out"
    for f in compare.html compare.h5 plots/compare_accuracy.png plots/compare_confusion.png \
        plots/compare_per_class.png plots/agreement.png plots/compare_attributions.png \
        run_a/plots/sanity_randomization.png run_b/plots/sanity_randomization.png; do
        [ -s "$work/compare/$f" ] || fail "--compare: $f not written"
    done
    "$check" png-min "$work/compare/plots/compare_attributions.png" 1400 300 || fail "compare figure"
    "$check" agreement "$work/compare/compare.h5" "$out/analysis.h5" "$work/long/analysis.h5" 10000 ||
        fail "compare.h5 agreement"
    for d in /a/f1 /b/f1 /confusion_difference /a/saliency /b/gradcam /image_indices; do
        h5dump -H -d "$d" "$work/compare/compare.h5" > /dev/null || fail "compare.h5 has no $d"
    done
    set +e
    "$viz" --compare "$out" "$work/does-not-exist" --out "$work/compare2" 2> "$work/cmp.err"
    code=$?
    set -e
    [ "$code" -eq 1 ] && [ "$(wc -l < "$work/cmp.err")" -eq 1 ] && grep -q "does-not-exist" "$work/cmp.err" ||
        fail "--compare with a missing run: exit $code, '$(cat "$work/cmp.err")'"
    echo "ok: cfx-viz --compare of two architectures"
    ;;

report)
    command -v chromium > /dev/null || fail "chromium not found (tools/install-deps.sh installs it)"
    [ -s "$run/report.html" ] || fail "$run/report.html missing (the viz_run test makes it)"
    out=$work/report
    rm -rf "$out"
    mkdir -p "$out"
    profile=$(mktemp -d)
    trap 'rm -rf "$profile"' EXIT
    chrome() {
        timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
            --disable-background-networking --disable-component-update --disable-sync \
            --user-data-dir="$profile" "$@" 2> "$out/chromium.log"
    }
    chrome --screenshot="$out/report.png" --window-size=1280,2000 "file://$run/report.html" \
        > /dev/null || fail "chromium could not render report.html (see $out/chromium.log)"
    "$check" png-min "$out/report.png" 1280 2000 || fail "screenshot of report.html"

    # A script appended to a copy of the page counts the images that failed
    # to load; --dump-dom prints the page after the load event.
    probe='<script>window.addEventListener("load",function(){var n=document.images.length,b=0;for(var i=0;i<n;i++){var m=document.images[i];if(!m.complete||m.naturalWidth===0)b++;}var p=document.createElement("p");p.id="probe";p.textContent="images="+n+" broken="+b;document.body.appendChild(p);});</script>'
    sed "s#</body>#${probe}</body>#" "$run/report.html" > "$out/probe.html"
    dom=$(chrome --dump-dom "file://$out/probe.html") || fail "chromium --dump-dom failed"
    result=$(grep -o '<p id="probe">[^<]*</p>' <<< "$dom" || true)
    echo "report.html: $result"
    [ "$result" = '<p id="probe">images=29 broken=0</p>' ] ||
        fail "report.html: expected 29 images that all load, got '$result'"
    # the probe itself notices a broken image
    sed 's#src="data:image/png;base64,[^"]*"#src="data:image/png;base64,AAAA"#' "$out/probe.html" \
        > "$out/broken.html"
    dom=$(chrome --dump-dom "file://$out/broken.html") || fail "chromium --dump-dom failed"
    grep -q '<p id="probe">images=29 broken=29</p>' <<< "$dom" ||
        fail "the probe did not notice broken images"
    echo "ok: report.html renders and its 29 images load"
    ;;

explorer)
    # explorer.html: its files, then tests/explorer/explorer_test.mjs clicks
    # through it and a comparison's in Chromium; what it showed is checked
    # against analysis.h5.
    [ -s "$run/explorer.html" ] || fail "$run/explorer.html missing (the viz_run test makes it)"
    here=$(cd "$(dirname "$0")" && pwd)
    command -v node > /dev/null || fail "node not found (tools/install-deps.sh installs it)"
    [ -d "$here/explorer/node_modules/puppeteer-core" ] ||
        fail "puppeteer-core is not installed in tests/explorer (tools/install-deps.sh installs it)"
    sheets=$(find "$run/explorer" -maxdepth 1 -name 'thumbs_*.png' | wc -l)
    [ "$sheets" -eq 20 ] || fail "$sheets thumbnail sheets, expected 20 (500 of 10,000 images each)"
    "$check" png "$run/explorer/thumbs_00.png" 800 640 || fail "thumbnail sheet"
    details=$(find "$run/explorer/a" -name '*.js' | wc -l)
    [ "$details" -eq 100 ] || fail "$details detail images, expected 100 (--explorer-images default)"
    out=$work/explorer
    rm -rf "$out"
    # B: another architecture, half the width and one block fewer
    train_run "$out/small" --set "model.layers=conv2d out=8 kernel=3 padding=1; relu; maxpool2d kernel=2; conv2d out=16 kernel=3 padding=1; relu; maxpool2d kernel=4; flatten; linear out=10"
    "$viz" --quiet --run "$out/small" --images 0 --explorer-images 0
    "$viz" --quiet --compare "$run" "$out/small" --out "$out/compare" --images 0 --ig-steps 4 \
        --smoothgrad-samples 2 --actmax-steps 8 --explorer-images 40
    for s in a b; do
        n=$(find "$out/compare/explorer/$s" -name '*.js' | wc -l)
        [ "$n" -eq 40 ] || fail "--compare --explorer-images 40: $n detail images of run $s"
    done
    (cd "$here/explorer" && timeout 240 node explorer_test.mjs "$run/explorer.html" \
        "$out/compare/explorer.html" "$out/screenshots") || fail "the browser test failed"
    shown=$out/screenshots/shown.txt
    [ "$(wc -l < "$shown")" -eq 4 ] || fail "$shown: expected 4 lines"
    while read -r page slot index cls prob; do
        if [ "$page" = count ]; then
            "$check" count "$run/analysis.h5" "$slot" "$index" || fail "the filtered count"
        else
            h5=$run/analysis.h5
            [ "$slot" = b ] && h5=$out/small/analysis.h5
            "$check" shown "$h5" "$index" "$cls" "$prob" || fail "$page page, run $slot"
        fi
    done < "$shown"
    for f in "$out"/screenshots/*.png; do
        "$check" png-min "$f" 1400 1000 || fail "screenshot $f"
    done
    echo "ok: explorer.html clicked through in Chromium; what it showed matches analysis.h5"
    ;;

errors)
    [ -s "$run/checkpoints/best.h5" ] || fail "$run missing (the viz_run test makes it)"
    expect_error() { # expect_error CODE PATTERN cfx-viz-args...
        local want=$1 pattern=$2 code
        shift 2
        set +e
        "$viz" --quiet "$@" > "$work/err.out" 2> "$work/err.txt"
        code=$?
        set -e
        local lines
        lines=$(wc -l < "$work/err.txt")
        [ "$code" -eq "$want" ] || fail "cfx-viz $*: exit code $code, expected $want: $(cat "$work/err.txt")"
        [ "$lines" -eq 1 ] || fail "cfx-viz $*: $lines lines on stderr, expected one: $(cat "$work/err.txt")"
        grep -q -- "$pattern" "$work/err.txt" || fail "cfx-viz $*: '$(cat "$work/err.txt")' does not mention '$pattern'"
        echo "ok: exit $code: $(cat "$work/err.txt")"
    }
    copy() { # copy NAME: a fresh copy of the run's inputs
        rm -rf "${work:?}/$1"
        mkdir -p "$work/$1"
        cp -r "$run/checkpoints" "$run/logs" "$work/$1/"
        echo "$work/$1"
    }

    expect_error 1 "no such run directory" --run "$work/does-not-exist"
    mkdir -p "$work/empty"
    expect_error 1 "checkpoints/best.h5" --run "$work/empty"
    d=$(copy no-metrics)
    rm "$d/logs/metrics.h5"
    expect_error 1 "logs/metrics.h5" --run "$d"
    d=$(copy damaged)
    head -c 5000 "$run/checkpoints/best.h5" > "$d/checkpoints/best.h5"
    expect_error 1 "best.h5" --run "$d"
    d=$(copy not-hdf5)
    echo "not an HDF5 file" > "$d/logs/metrics.h5"
    expect_error 1 "metrics.h5" --run "$d"
    # the metrics log of another run (other seed and validation subset)
    train_run "$work/other" --set train.seed=2 --set data.val_limit=499 --set data.train_limit=256
    d=$(copy mixed)
    cp "$work/other/logs/metrics.h5" "$d/logs/metrics.h5"
    expect_error 1 "different runs" --run "$d"
    expect_error 1 "test_batch.bin" --run "$run" --data "$work/empty"
    expect_error 2 "out of range" --run "$run" --images 0,10000
    expect_error 2 "out of range" --run "$run" --images -1
    expect_error 2 "not a comma-separated list" --run "$run" --images 1,x
    expect_error 2 "not png, svg or pdf" --run "$run" --format gif
    expect_error 2 "unknown or incomplete option" --run "$run" --bogus
    expect_error 2 "not a whole number from 0 to 10000" --run "$run" --explorer-images 20000
    d=$(copy explorer-blocked)
    touch "$d/explorer" # a file where the explorer's directory must go
    expect_error 1 "explorer" --run "$d" --data "$data"
    d=$(copy unwritable)
    touch "$d/plots" # a file where the directory must go
    expect_error 1 "plots" --run "$d" --data "$data"
    if [ "$(id -u)" -ne 0 ]; then # root writes anywhere
        d=$(copy read-only)
        chmod a-w "$d"
        expect_error 1 "$d" --run "$d" --data "$data"
        chmod u+w "$d"
    fi

    # other formats: the same figures as SVG and PDF
    for fmt in svg pdf; do
        d=$(copy "format-$fmt")
        "$viz" --quiet --run "$d" --data "$data" --format "$fmt" --ig-steps 4 --smoothgrad-samples 2 \
            --actmax-steps 8 --explorer-images 0 || fail "--format $fmt"
        n=$(find "$d/plots" "$d/featuremaps" -name "*.$fmt" | wc -l)
        [ "$n" -eq 29 ] || fail "--format $fmt: $n .$fmt files, expected 29"
        head -c 5 "$d/plots/confusion_matrix.$fmt" | grep -Eq '^(<\?xml|<svg|%PDF-)' ||
            fail "--format $fmt: plots/confusion_matrix.$fmt is not $fmt"
        [ -s "$d/report.html" ] || fail "--format $fmt: no report.html"
        echo "ok: --format $fmt wrote 29 .$fmt figures"
    done
    ;;

*)
    fail "unknown mode $mode"
    ;;
esac
