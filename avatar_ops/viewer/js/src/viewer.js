// The script of an avatar's viewer.html (built into ../../dist/viewer.js by ../build.mjs).
//
// The page embeds its assets as base64 in <script type="application/octet-stream"> elements, so it
// needs nothing but itself: from file:// nothing else could be fetched. It shows, side by side in
// one three.js scene, the Gaussian splat (Spark) on the left and the skinned glTF playing a clip
// on the right, with orbit controls, and exposes hooks for tests on `window`:
//   viewerState       {ready, error, splatCount, clips, clip, duration, time, playing, frames}
//   viewerSetClip(n)  play clip n from its start; resolves once drawn
//   viewerSetTime(s)  pause and show the current clip at s seconds; resolves once drawn
//   viewerSettle()    resolves once the current view is drawn with the splats sorted for it
//   viewerSplats(n)   the first n splats as Spark decoded them: {center, color, opacity}, file frame
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { SparkRenderer, SplatFileType, SplatMesh } from "@sparkjsdev/spark";

const BACKGROUND = 0x1d2027;
const SETTLE_TIMEOUT_MS = 20000;

const state = { ready: false, error: null, splatCount: 0, clips: [], clip: null, duration: 0, time: 0, playing: false, frames: 0 };
window.viewerState = state;
// Replaced once a glTF with clips has loaded.
window.viewerSetClip = window.viewerSetTime = () => {
  throw new Error("this page has no animation clips (no avatar.glb, or one without animations, or it has not loaded)");
};

const $ = (id) => document.getElementById(id);

function showStatus(text) {
  $("viewer-status").textContent = text;
}

// The first error wins: it is the cause, later ones are usually its consequences.
function fail(error) {
  const message = error instanceof Error ? error.message : String(error);
  console.error("avatar viewer:", error);
  if (state.error !== null) return;
  state.error = message;
  const box = $("viewer-error");
  box.textContent = `The viewer could not load all of this avatar: ${message}`;
  box.hidden = false;
  showStatus("");
}

window.addEventListener("error", (event) => fail(event.error ?? event.message));
window.addEventListener("unhandledrejection", (event) => fail(event.reason));

function embeddedBytes(id) {
  const element = $(id);
  if (element === null) return null;
  let binary;
  try {
    binary = atob(element.textContent.replace(/\s+/g, ""));
  } catch (error) {
    throw new Error(`the page's embedded ${id} is not valid base64 (${error.message})`);
  }
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function embeddedMeta() {
  const element = $("viewer-meta");
  if (element === null) throw new Error("the page has no #viewer-meta element");
  return JSON.parse(element.textContent);
}

function loadGlb(bytes) {
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  return new Promise((resolve, reject) => {
    const failed = (error) => reject(new Error(`avatar.glb could not be read: ${error.message ?? error}`));
    try {
      new GLTFLoader().parse(buffer, "", resolve, failed);
    } catch (error) {
      failed(error); // a bad JSON chunk throws here rather than reaching the callback
    }
  });
}

// Moves `object`, whose bounds in the scene are `box`, to stand on y = 0 centred on x = `x`, z = 0;
// returns its bounds there.
function standAt(object, box, x) {
  const center = box.getCenter(new THREE.Vector3());
  const offset = new THREE.Vector3(x - center.x, -box.min.y, -center.z);
  object.position.add(offset);
  return box.clone().translate(offset);
}

function main() {
  const meta = embeddedMeta();
  $("viewer-title").textContent = meta.title;
  document.title = meta.title;
  const splatBytes = embeddedBytes("viewer-splat");
  if (splatBytes === null) throw new Error("the page embeds no splat (#viewer-splat)");
  const glbBytes = embeddedBytes("viewer-glb");

  const canvas = $("viewer-canvas");
  // preserveDrawingBuffer: screenshots (and tests) read the last drawn frame, whenever they come.
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: false, preserveDrawingBuffer: true });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(BACKGROUND);
  scene.add(new THREE.HemisphereLight(0xffffff, 0x555555, 2.0));
  const sun = new THREE.DirectionalLight(0xffffff, 1.5);
  sun.position.set(1, 2, 3);
  scene.add(sun);
  const camera = new THREE.PerspectiveCamera(35, 1, 0.01, 100);
  // Frames are drawn on demand (a view change, a playing clip, Spark's finished sort, a waiting
  // settle()): a still page costs no CPU, which matters with software WebGL.
  let needsFrame = true;
  const invalidate = () => {
    needsFrame = true;
  };
  const controls = new OrbitControls(camera, canvas);
  controls.addEventListener("change", invalidate);
  const spark = new SparkRenderer({ renderer, onDirty: invalidate });
  scene.add(spark);

  function resize() {
    const width = Math.max(1, canvas.clientWidth);
    const height = Math.max(1, canvas.clientHeight);
    renderer.setSize(width, height, false);
    camera.aspect = width / height;
    camera.updateProjectionMatrix();
    invalidate();
  }
  window.addEventListener("resize", resize);
  resize();

  const timer = new THREE.Timer();
  let mixer = null;
  let action = null;
  let waiters = [];
  renderer.setAnimationLoop((now) => {
    timer.update(now);
    const playing = mixer !== null && state.playing;
    if (!needsFrame && !playing && waiters.length === 0) return;
    needsFrame = false;
    if (playing) mixer.update(timer.getDelta());
    if (action !== null) state.time = action.time;
    renderer.render(scene, camera);
    state.frames += 1;
    const shown = action === null ? "" : `${state.time.toFixed(2)} s`;
    if ($("viewer-time").textContent !== shown) $("viewer-time").textContent = shown;
    // Spark sorts splats for a view in a worker; a frame drawn after the sort settles shows them in order.
    const sorted = !spark.sorting && !spark.sortDirty;
    for (const waiter of waiters) {
      if (state.frames >= waiter.frame && sorted) waiter.resolve(state.frames);
    }
  });

  function settle() {
    invalidate();
    return new Promise((resolve, reject) => {
      const waiter = { frame: state.frames + 2 }; // the frame that starts the sort for this view, then one drawn after it
      const done = () => {
        clearTimeout(timeout);
        waiters = waiters.filter((other) => other !== waiter);
      };
      const timeout = setTimeout(() => {
        done();
        reject(new Error(`the view did not settle within ${SETTLE_TIMEOUT_MS} ms`));
      }, SETTLE_TIMEOUT_MS);
      waiter.resolve = (frames) => {
        done();
        resolve(frames);
      };
      waiters.push(waiter);
    });
  }
  window.viewerSettle = settle;

  async function loadSplat() {
    const splat = new SplatMesh({ fileBytes: splatBytes, fileType: SplatFileType.SPLAT });
    try {
      await splat.initialized;
    } catch (error) {
      throw new Error(`avatar_canonical.splat could not be read: ${error.message ?? error}`);
    }
    // The .splat is in OpenCV/COLMAP axes (y down, head at -y): half a turn about x stands it up
    // in three.js's y-up world, facing +z like the glTF.
    splat.rotation.x = Math.PI;
    splat.updateMatrix();
    state.splatCount = splat.splats.getNumSplats();
    // The first `count` splats as Spark decoded them, in the file's own frame (before the turn).
    window.viewerSplats = (count) => {
      const out = [];
      for (let i = 0; i < Math.min(count, state.splatCount); i++) {
        const { center, opacity, color } = splat.splats.getSplat(i);
        out.push({ center: [center.x, center.y, center.z], color: [color.r, color.g, color.b], opacity });
      }
      return out;
    };
    const box = splat.getBoundingBox(true).applyMatrix4(splat.matrix);
    return { object: splat, box };
  }

  async function loadMesh() {
    const gltf = await loadGlb(glbBytes);
    // A skinned mesh's bounds are its bind pose: an animated pose may leave them.
    gltf.scene.traverse((node) => {
      if (node.isSkinnedMesh) node.frustumCulled = false;
    });
    gltf.scene.updateMatrixWorld(true);
    const box = new THREE.Box3().setFromObject(gltf.scene);
    return { object: gltf.scene, box, animations: gltf.animations };
  }

  function setupClips(root, animations) {
    const byName = new Map(animations.map((clip) => [clip.name, clip]));
    const names = meta.clips.length > 0 ? meta.clips : animations.map((clip) => clip.name);
    const missing = names.filter((name) => !byName.has(name));
    if (missing.length > 0) {
      throw new Error(`avatar.glb has no clip named ${missing.join(", ")} (it has: ${[...byName.keys()].join(", ") || "none"})`);
    }
    state.clips = names;
    if (names.length === 0) return;
    mixer = new THREE.AnimationMixer(root);
    const select = $("viewer-clip");
    for (const name of names) select.add(new Option(name, name));
    const play = $("viewer-play");
    const setPlaying = (playing) => {
      state.playing = playing;
      play.textContent = playing ? "Pause" : "Play";
    };

    window.viewerSetClip = (name) => {
      const clip = byName.get(name);
      if (clip === undefined || !names.includes(name)) {
        throw new Error(`viewerSetClip: no clip named ${JSON.stringify(name)}; this page has ${names.join(", ")}`);
      }
      if (action !== null) action.stop();
      action = mixer.clipAction(clip);
      action.reset().play();
      mixer.update(0);
      state.clip = name;
      state.duration = clip.duration;
      state.time = 0;
      select.value = name;
      return settle();
    };
    window.viewerSetTime = (seconds) => {
      if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) {
        throw new Error(`viewerSetTime: seconds must be a finite number >= 0, got ${seconds}`);
      }
      setPlaying(false);
      const duration = action.getClip().duration;
      action.time = duration > 0 ? seconds % duration : 0;
      mixer.update(0);
      state.time = action.time;
      return settle();
    };
    select.addEventListener("change", () => window.viewerSetClip(select.value));
    play.addEventListener("click", () => setPlaying(!state.playing));
    $("viewer-clip-ui").hidden = false;
    setPlaying(true);
    window.viewerSetClip(names[0]);
  }

  function frame(boxes) {
    const size = new THREE.Vector3();
    const union = new THREE.Box3();
    for (const box of boxes) union.union(box);
    union.getSize(size);
    const center = union.getCenter(new THREE.Vector3());
    const half = THREE.MathUtils.degToRad(camera.fov / 2);
    const fitHeight = size.y / 2 / Math.tan(half);
    const fitWidth = size.x / 2 / (Math.tan(half) * camera.aspect);
    const distance = 1.1 * Math.max(fitHeight, fitWidth) + size.z / 2;
    camera.position.set(center.x, center.y, center.z + distance);
    camera.near = distance / 100;
    camera.far = distance * 10;
    camera.updateProjectionMatrix();
    controls.target.copy(center);
    controls.update();
  }

  async function start() {
    showStatus("Loading…");
    // Each asset loads on its own: one that fails is reported while the other is still shown.
    const [splatResult, meshResult] = await Promise.allSettled([loadSplat(), glbBytes === null ? null : loadMesh()]);
    const splat = splatResult.status === "fulfilled" ? splatResult.value : null;
    const mesh = meshResult.status === "fulfilled" ? meshResult.value : null;
    // Side by side with a gap of a tenth of the taller one's height: the splat left, the mesh right.
    const widthOf = (box) => box.max.x - box.min.x;
    const heightOf = (item) => (item === null ? 0 : item.box.max.y - item.box.min.y);
    const gap = 0.1 * Math.max(heightOf(splat), heightOf(mesh));
    const both = splat !== null && mesh !== null;
    const placed = [];
    for (const [item, side] of [[splat, -1], [mesh, 1]]) {
      if (item === null) continue;
      placed.push(standAt(item.object, item.box, both ? (side * (widthOf(item.box) + gap)) / 2 : 0));
      scene.add(item.object);
    }
    if (placed.length > 0) frame(placed);
    $("viewer-legend").textContent = both ? "left: Gaussian splat · right: skinned mesh" : mesh === null ? "Gaussian splat" : "skinned mesh";
    if (splat !== null) {
      $("show-splat").addEventListener("change", (event) => {
        splat.object.visible = event.target.checked;
        invalidate();
      });
    }
    if (mesh !== null) {
      $("show-mesh").addEventListener("change", (event) => {
        mesh.object.visible = event.target.checked;
        invalidate();
      });
      $("show-mesh-label").hidden = false;
      setupClips(mesh.object, mesh.animations);
    }
    for (const result of [splatResult, meshResult]) {
      if (result.status === "rejected") fail(result.reason);
    }
    await settle();
    if (state.error === null) {
      showStatus("");
      state.ready = true;
    }
  }

  start().catch(fail);
}

try {
  main();
} catch (error) {
  fail(error);
}
