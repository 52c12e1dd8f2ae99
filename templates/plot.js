/* kmatrix plots: every <script type="application/json" class="plot-data"> on the page is
   a plot the report computed (numbers only; labels are set as text, never as HTML),
   drawn with uPlot into the element named by its data-for attribute. Drag across the
   plot to zoom into a stretch of the x axis, double-click to zoom out; hovering shows
   every line's value at that point. No network: uPlot is a file of this report. Each
   holder keeps its uPlot instance (holder.uplot) and says data-drawn="<points>". */
(function () {
  "use strict";

  function fmt(v) {
    if (v === null || v === undefined || isNaN(v)) return "–";
    var a = Math.abs(v);
    var digits = a >= 100 ? 0 : a >= 1 ? 2 : 3;
    return v.toLocaleString("en-US", {maximumFractionDigits: digits});
  }

  function overlay(spec) {
    /* Bands behind the lines, marker lines (a stall, a threshold) on top. */
    function clip(u) {
      var ctx = u.ctx, b = u.bbox;
      ctx.save();
      ctx.beginPath();
      ctx.rect(b.left, b.top, b.width, b.height);
      ctx.clip();
      return ctx;
    }
    function bands(u) {
      if (!spec.bands || !spec.bands.length) return;
      var ctx = clip(u), b = u.bbox;
      spec.bands.forEach(function (band) {
        var x0 = u.valToPos(band.from, "x", true), x1 = u.valToPos(band.to, "x", true);
        ctx.fillStyle = band.colour;
        ctx.fillRect(Math.min(x0, x1), b.top, Math.abs(x1 - x0), b.height);
      });
      ctx.restore();
    }
    function lines(u) {
      var ctx = clip(u), b = u.bbox, px = uPlot.pxRatio;
      ctx.lineWidth = 1.5 * px;
      ctx.font = 11 * px + "px sans-serif";
      ctx.textAlign = "left";
      ctx.textBaseline = "alphabetic";
      (spec.vlines || []).forEach(function (l) {
        var x = u.valToPos(l.x, "x", true);
        ctx.strokeStyle = ctx.fillStyle = l.colour;
        ctx.setLineDash([6 * px, 4 * px]);
        ctx.beginPath();
        ctx.moveTo(x, b.top);
        ctx.lineTo(x, b.top + b.height);
        ctx.stroke();
        if (l.label) ctx.fillText(l.label, x + 4 * px, b.top + 12 * px);
      });
      (spec.hlines || []).forEach(function (l) {
        var y = u.valToPos(l.y, l.axis ? "y2" : "y", true);
        ctx.strokeStyle = ctx.fillStyle = l.colour;
        ctx.setLineDash([2 * px, 3 * px]);
        ctx.beginPath();
        ctx.moveTo(b.left, y);
        ctx.lineTo(b.left + b.width, y);
        ctx.stroke();
        if (l.label) ctx.fillText(l.label, b.left + 4 * px, y - 4 * px);
      });
      ctx.restore();
    }
    return {hooks: {drawAxes: [bands], draw: [lines]}};
  }

  function fromZero(u, min, max) {
    return [Math.min(0, min), max > 0 ? max * 1.08 : 1];
  }

  function options(spec, width) {
    var cats = spec.categories;
    var x = {time: false};
    var xAxis = {label: spec.xlabel, values: function (u, ticks) { return ticks.map(fmt); }};
    if (spec.scatter) {
      x.range = function (u, min, max) {
        var pad = (max - min) * 0.04 || Math.abs(min) * 0.04 || 1;
        return [min - pad, max + pad];
      };
    }
    if (cats) {
      x.range = function (u, min, max) { return [min - 0.5, max + 0.5]; };
      xAxis.splits = function () {
        var step = Math.ceil(spec.x.length / 16);  /* at most 16 names; hover names each */
        return spec.x.filter(function (v, i) { return i % step === 0; });
      };
      xAxis.values = function (u, ticks) { return ticks.map(function (t) { return cats[t] || ""; }); };
    }
    var axes = [xAxis, {scale: "y", label: spec.axes[0], size: 64,
                        values: function (u, ticks) { return ticks.map(fmt); }}];
    var scales = {x: x, y: {range: spec.yrange ? function () { return spec.yrange; } : fromZero}};
    if (spec.axes.length > 1) {
      scales.y2 = {range: fromZero};
      axes.push({scale: "y2", side: 1, label: spec.axes[1], size: 64, grid: {show: false},
                 values: function (u, ticks) { return ticks.map(fmt); }});
    }
    var series = [{label: spec.xlabel, value: function (u, v) {
      if (v === null || v === undefined) return "–";
      return cats ? (cats[v] || "") : fmt(v) + (spec.xunit ? " " + spec.xunit : "");
    }}];
    spec.series.forEach(function (s) {
      var line = {
        label: s.label,
        stroke: s.colour,
        width: 1.5,
        scale: s.axis ? "y2" : "y",
        spanGaps: false,
        points: {show: !!spec.points, size: 7, fill: s.colour},
        value: function (u, v) { return fmt(v); }
      };
      if (spec.scatter) line.paths = function () { return null; };
      series.push(line);
    });
    return {width: width, height: spec.height || 240, scales: scales, axes: axes,
            series: series, cursor: {drag: {x: true, y: false}}, plugins: [overlay(spec)]};
  }

  function draw(script) {
    var holder = document.getElementById(script.getAttribute("data-for"));
    if (!holder || typeof uPlot === "undefined") return;
    var spec = JSON.parse(script.textContent);
    var width = Math.max(300, Math.min(holder.clientWidth || 640, spec.width || 760));
    var data = [spec.x].concat(spec.series.map(function (s) { return s.values; }));
    holder.uplot = new uPlot(options(spec, width), data, holder);
    holder.setAttribute("data-drawn", String(spec.x.length));
  }

  Array.prototype.forEach.call(document.querySelectorAll("script.plot-data"), draw);
})();
