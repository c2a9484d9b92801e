// The embedding map's interactions: recolour (cluster / selected / has duplicates / quality issue),
// wheel zoom, drag pan, thumbnail tip on hover. Per-point data comes from the JSON in #map-data
// (index i = circle data-i), the palette from the svg's data-palette: both written by core/report.py.
(function () {
  var svg = document.getElementById('embedding-map');
  if (!svg) { return; }
  var data = JSON.parse(document.getElementById('map-data').textContent);
  var palette = JSON.parse(svg.getAttribute('data-palette'));
  var qualityColours = JSON.parse(svg.getAttribute('data-quality-colours') || '{}');
  var pts = svg.querySelectorAll('circle.pt');
  var modes = {
    cluster: function (d) { return palette[d.c % palette.length]; },
    selected: function (d) { return d.s ? '#d62728' : '#c7c7c7'; },
    duplicate: function (d) { return d.d ? '#ff7f0e' : '#c7c7c7'; },
    quality: function (d) { return d.q ? (qualityColours[d.q] || '#9467bd') : '#c7c7c7'; }
  };
  function colour(mode) {
    for (var i = 0; i < pts.length; i++) { pts[i].setAttribute('fill', modes[mode](data[i])); }
  }
  var buttons = document.querySelectorAll('button.mapmode');
  for (var b = 0; b < buttons.length; b++) {
    buttons[b].addEventListener('click', function (e) { colour(e.target.getAttribute('data-mode')); });
  }
  var vb = svg.viewBox.baseVal, base = [vb.x, vb.y, vb.width, vb.height];
  svg.addEventListener('wheel', function (e) {
    e.preventDefault();
    var r = svg.getBoundingClientRect(), k = e.deltaY < 0 ? 0.8 : 1.25;
    var mx = vb.x + (e.clientX - r.left) / r.width * vb.width, my = vb.y + (e.clientY - r.top) / r.height * vb.height;
    vb.x = mx - (mx - vb.x) * k; vb.y = my - (my - vb.y) * k; vb.width *= k; vb.height *= k;
  }, {passive: false});
  var drag = null;
  svg.addEventListener('mousedown', function (e) { drag = [e.clientX, e.clientY, vb.x, vb.y]; });
  window.addEventListener('mouseup', function () { drag = null; });
  window.addEventListener('mousemove', function (e) {
    if (!drag) { return; }
    var r = svg.getBoundingClientRect();
    vb.x = drag[2] - (e.clientX - drag[0]) / r.width * vb.width;
    vb.y = drag[3] - (e.clientY - drag[1]) / r.height * vb.height;
  });
  document.getElementById('map-reset').addEventListener('click', function () {
    vb.x = base[0]; vb.y = base[1]; vb.width = base[2]; vb.height = base[3];
  });
  var tip = document.getElementById('map-tip'), img = document.getElementById('map-tip-img');
  var cap = document.getElementById('map-tip-cap');
  svg.addEventListener('mouseover', function (e) {
    var t = e.target;
    if (!t.classList || !t.classList.contains('pt')) { return; }
    var d = data[+t.getAttribute('data-i')];
    if (d.t) { img.src = d.t; img.hidden = false; } else { img.hidden = true; }
    cap.textContent = t.textContent;
    var r = svg.getBoundingClientRect();
    tip.style.left = (e.clientX - r.left + 12) + 'px'; tip.style.top = (e.clientY - r.top + 12) + 'px';
    tip.hidden = false;
  });
  svg.addEventListener('mouseout', function (e) {
    if (e.target.classList && e.target.classList.contains('pt')) { tip.hidden = true; }
  });
})();
