import "uplot/dist/uPlot.min.css";

import { useEffect, useRef } from "react";
import uPlot from "uplot";

interface Props {
  /** Accessible title, also shown above the chart. */
  title: string;
  /** Unit shown on the axis, e.g. "changes/s". */
  unit: string;
  /** x: Unix seconds; y: values (null for a gap). */
  x: number[];
  y: (number | null)[];
  testId: string;
}

/** A small time-series line chart (uPlot). */
export function Chart({ title, unit, x, y, testId }: Props) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    if (!host.current) return;
    const style = getComputedStyle(document.documentElement);
    const accent = style.getPropertyValue("--accent").trim() || "#0f7c8c";
    const muted = style.getPropertyValue("--muted").trim() || "#5b6b7b";
    const axis = { stroke: muted, grid: { stroke: "rgba(128,128,128,0.15)" }, ticks: { stroke: "rgba(128,128,128,0.3)" } };
    plot.current = new uPlot(
      {
        width: host.current.clientWidth || 600,
        height: 160,
        legend: { show: false },
        cursor: { show: true },
        scales: { x: { time: true } },
        axes: [axis, { ...axis, label: unit, size: 60 }],
        series: [{}, { label: title, stroke: accent, width: 2, fill: "rgba(53,179,195,0.12)", spanGaps: false }],
      },
      [[], []],
      host.current,
    );
    const resize = new ResizeObserver(() => {
      if (host.current && plot.current) plot.current.setSize({ width: host.current.clientWidth, height: 160 });
    });
    resize.observe(host.current);
    return () => {
      resize.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
  }, [title, unit]);

  useEffect(() => {
    plot.current?.setData([x, y] as uPlot.AlignedData);
  }, [x, y]);

  return (
    <figure className="chart" data-testid={testId} data-points={x.length}>
      <figcaption>{title}</figcaption>
      <div ref={host} role="img" aria-label={`${title} over the last ${x.length} seconds`} />
    </figure>
  );
}
