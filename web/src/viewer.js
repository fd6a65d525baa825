// The interactive 3D viewer: three.js + Spark draw the trained Gaussians; drag to orbit, wheel to zoom.
import * as THREE from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
import { SparkRenderer, SplatFileType, SplatMesh } from "@sparkjsdev/spark";

export const BACKGROUND = 0x202020;

const TYPES = { spz: SplatFileType.SPZ, ply: SplatFileType.PLY, splat: SplatFileType.SPLAT };

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

  const box = mesh.getBoundingBox(true).applyMatrix4(mesh.matrixWorld);
  const center = box.getCenter(new THREE.Vector3());
  const radius = Math.max(box.getSize(new THREE.Vector3()).length() / 2, 1e-3);
  camera.position.copy(center).add(new THREE.Vector3(0, radius * 0.3, radius * 1.6));
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
