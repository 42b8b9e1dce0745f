# Sourced by the anchors' run.sh (aphq, fimaq, ias, ptq4vit): the steps every runner shares.

# patched_checkout REPO COMMIT DEST PATCH_DIR
#   Clone REPO (a URL or a local mirror) into DEST, check out COMMIT and apply PATCH_DIR/*.diff in
#   name order (each patch was made on top of the previous ones).
patched_checkout() {
  local repo=$1 commit=$2 dest=$3 patches=$4 p
  git clone -q "$repo" "$dest"
  git -C "$dest" checkout -q "$commit"
  for p in "$patches"/*.diff; do
    git -C "$dest" apply --whitespace=nowarn "$p"
  done
  echo "patched checkout: $dest ($(ls "$patches"/*.diff | wc -l) patches on $commit)"
}

# export_calib_once PYTHON REPO_ROOT MODEL SIZE SEED OUT
#   Write ptqbench's calibration draw to OUT (checked bit-identical to what a ptqbench job
#   calibrates on) unless OUT exists: runs of one draw share the file.
export_calib_once() {
  local python=$1 root=$2 model=$3 size=$4 seed=$5 out=$6
  if [ ! -f "$out" ]; then
    (cd "$root" && "$python" "$root/docs/anchors/common/export_calib.py" --model "$model" --size "$size" \
        --seed "$seed" --out "$out" --check)
  fi
}
