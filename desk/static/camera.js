// Webcam enrolment: the preview (getUserMedia), one frame at a time to the desk, its advice shown live,
// and the best shots shown before anything is saved. The next frame goes only after the last answer,
// so a slow desk never builds up a queue.
"use strict";
(function () {
  const WIDTH = 640, HEIGHT = 480, QUALITY = 0.92, PAUSE_MS = 150;

  function csrf() {
    return document.querySelector("input[name=csrf]").value;
  }

  function post(url, body, type) {
    const headers = { "X-CSRF-Token": csrf() };
    if (type) headers["Content-Type"] = type;
    return fetch(url, { method: "POST", body: body, headers: headers, credentials: "same-origin" });
  }

  function start() {
    const root = document.getElementById("camera");
    if (!root) return;
    const needed = parseInt(root.dataset.shots, 10);
    const video = document.getElementById("preview");
    const advice = document.getElementById("advice");
    const good = document.getElementById("good");
    const shots = document.getElementById("shots");
    const save = document.getElementById("save");
    const canvas = document.createElement("canvas");
    canvas.width = WIDTH;
    canvas.height = HEIGHT;
    let shown = -1, running = true;

    function say(text, ok) {
      advice.textContent = text;
      advice.classList.toggle("good", !!ok);
    }

    function showShots(count) {
      if (count === shown) return;
      shown = count;
      shots.replaceChildren();
      for (let i = 0; i < count; i++) {
        const img = document.createElement("img");
        img.src = "/enrol/camera/shot/" + i + "?t=" + Date.now();
        img.alt = "shot " + (i + 1);
        img.width = 120;
        img.className = "shot";
        shots.appendChild(img);
      }
    }

    function next() {
      if (!running) return;
      canvas.getContext("2d").drawImage(video, 0, 0, WIDTH, HEIGHT);
      canvas.toBlob(function (blob) {
        post("/enrol/camera/frame", blob, "image/jpeg")
          .then(function (response) { return response.json(); })
          .then(function (answer) {
            say(answer.advice, answer.advice === "good, hold it");
            good.textContent = Math.min(answer.good, needed);
            if (answer.ready) {
              showShots(answer.shots);
              save.disabled = false;
              say("done: check the shots, then save", true);
              running = false;
              return;
            }
            setTimeout(next, PAUSE_MS);
          })
          .catch(function () { say("the desk did not answer; retrying"); setTimeout(next, 1000); });
      }, "image/jpeg", QUALITY);
    }

    document.getElementById("again").addEventListener("click", function () {
      post("/enrol/camera/reset").then(function () {
        shots.replaceChildren(); shown = -1; save.disabled = true; good.textContent = "0";
        if (!running) { running = true; next(); }
      });
    });

    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      say("this browser cannot use a camera here (the desk must be opened over https or on localhost)");
      return;
    }
    navigator.mediaDevices.getUserMedia({ video: { width: WIDTH, height: HEIGHT }, audio: false })
      .then(function (stream) {
        video.srcObject = stream;
        video.addEventListener("playing", function () { say("look at the camera"); next(); }, { once: true });
      })
      .catch(function (error) { say("no camera: " + error.message); });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
