// The interactive 3D viewer: three.js + Spark draw the trained Gaussians; drag to orbit, wheel to zoom.
import * as THREE from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
import { SparkRenderer, SplatFileType, SplatMesh } from "@sparkjsdev/spark";

export const BACKGROUND = 0x202020;

const TYPES = { spz: SplatFileType.SPZ, ply: SplatFileType.PLY, splat: SplatFileType.SPLAT };

// Where to look and from how far: the middle 90% of the Gaussians' centres on each axis, so a
// few far-away floaters (common in real captures) do not push the camera away from the subject.
function frame(mesh) {
  const xs = [], ys = [], zs = [];
  const stride = Math.max(1, Math.floor(mesh.packedSplats?.numSplats / 20000) || 1);
  mesh.forEachSplat((i, c) => {
    if (i % stride) return;
    const p = c.clone().applyMatrix4(mesh.matrixWorld);
    xs.push(p.x); ys.push(p.y); zs.push(p.z);
  });
  if (!xs.length) return { center: new THREE.Vector3(), radius: 1 };
  const q = (a, f) => a.sort((u, v) => u - v)[Math.min(a.length - 1, Math.floor(f * a.length))];
  const lo = new THREE.Vector3(q(xs, 0.05), q(ys, 0.05), q(zs, 0.05));
  const hi = new THREE.Vector3(q(xs, 0.95), q(ys, 0.95), q(zs, 0.95));
  return { center: lo.clone().add(hi).multiplyScalar(0.5), radius: Math.max(hi.distanceTo(lo) / 2, 1e-3) };
}

// Show the model at `url` (`format`: spz, splat or ply) in `container`; resolves once it is drawn.
export async function showModel(container, url, format) {
  const width = container.clientWidth || 640;
  const height = container.clientHeight || 480;
  // preserveDrawingBuffer: screenshots (and the browser test) read what was last drawn.
  const renderer = new THREE.WebGLRenderer({ antialias: false, preserveDrawingBuffer: true });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
  renderer.setSize(width, height);
  renderer.setClearColor(BACKGROUND);
  container.replaceChildren(renderer.domElement);

  const scene = new THREE.Scene();
  const camera = new THREE.PerspectiveCamera(50, width / height, 0.01, 1000);
  scene.add(new SparkRenderer({ renderer }));
  const mesh = new SplatMesh({ url, fileType: TYPES[format] });
  if (format !== "spz") {
    // PLY and .splat keep COLMAP's right-down-front axes; SPZ is already right-up-back (three.js).
    mesh.quaternion.set(1, 0, 0, 0);
  }
  scene.add(mesh);
  await mesh.initialized;
  mesh.updateMatrixWorld(true);

  const { center, radius } = frame(mesh);
  camera.position.copy(center).add(new THREE.Vector3(0, radius * 0.5, radius * 2.6));
  camera.near = radius / 100;
  camera.far = radius * 100;
  camera.updateProjectionMatrix();
  const controls = new OrbitControls(camera, renderer.domElement);
  controls.target.copy(center);
  controls.enableDamping = true;
  controls.update();

  new ResizeObserver(() => {
    const w = container.clientWidth, h = container.clientHeight;
    if (!w || !h) return;
    renderer.setSize(w, h);
    camera.aspect = w / h;
    camera.updateProjectionMatrix();
  }).observe(container);
  renderer.setAnimationLoop(() => {
    controls.update();
    renderer.render(scene, camera);
  });
  container.dataset.loaded = "true";
  return { renderer, mesh };
}
