import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import type { ConsumerActivity, ConsumerView } from "../lib/types";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";
import { attemptStatus, chartSeries, ConsumerPage, parseHeaders } from "./ConsumerPage";
import { ConsumersPanel } from "./ConsumersPanel";

vi.mock("../lib/backend", async () =>
  (await import("../test/fakeBackend")).commands([
    "listConsumers",
    "consumerActivity",
    "setConsumerPaused",
    "testConsumer",
    "editConsumer",
    "removeConsumer",
    "revealSigningSecret",
    "revealPullToken",
    "retryConsumer",
    "skipConsumer",
    "checkConsumerFilter",
    "collections",
  ]),
);
// uPlot draws on a canvas, which jsdom lacks; the chart's inputs are what is checked here.
vi.mock("./Chart", () => ({
  Chart: ({ testId, x, y }: { testId: string; x: number[]; y: (number | null)[] }) => (
    <div data-testid={testId} data-x={JSON.stringify(x)} data-y={JSON.stringify(y)} />
  ),
}));

const hook = (overrides: Partial<ConsumerView> = {}): ConsumerView => ({
  id: "c1",
  name: "orders-hook",
  collections: ["public/orders"],
  actions: [],
  filter: 'record.status == "paid"',
  mode: "changes",
  start: "now",
  groupBy: [],
  destination: {
    type: "webhook",
    url: "http://127.0.0.1:9000/hook",
    headers: { "x-team": "shop" },
    secretHeaders: ["x-api-key"],
    batchSize: 10,
    timeoutMs: 30000,
    maxRetries: 3,
    maxInFlight: 10,
  },
  position: 12,
  pending: 4,
  failed: 0,
  notices: [],
  paused: false,
  parked: [],
  ...overrides,
});

const NOW = 1_700_000_100_000;

const activity = (overrides: Partial<ConsumerActivity> = {}): ConsumerActivity => ({
  attempts: [
    { atMs: NOW - 1000, messages: 2, status: 204, error: null, durationMs: 12, test: false },
    {
      atMs: NOW - 3000,
      messages: 2,
      status: 500,
      error: "http://127.0.0.1:9000/hook answered HTTP 500 Internal Server Error: ",
      durationMs: 7,
      test: false,
    },
  ],
  samples: [{ second: NOW / 1000 - 1, delivered: 2, latencyAvgMs: 1500.4, latencyMaxMs: 1600 }],
  nowMs: NOW,
  ...overrides,
});

beforeEach(() => {
  resetBackend();
});

describe("chartSeries", () => {
  it("has one point per second ending now: 0 delivered and a latency gap where nothing was delivered", () => {
    const s = chartSeries([{ second: 99, delivered: 3, latencyAvgMs: 10.6, latencyMaxMs: 20 }], 100_500, 3);
    expect(s.x).toEqual([98, 99, 100]);
    expect(s.delivered).toEqual([0, 3, 0]);
    expect(s.latency).toEqual([null, 11, null]);
  });
});

describe("attemptStatus", () => {
  it("names the HTTP status, a request with no answer, or a NATS publish acknowledged", () => {
    const base = { atMs: 0, messages: 1, durationMs: 1, test: false };
    expect(attemptStatus({ ...base, status: 500, error: "HTTP 500" })).toBe("HTTP 500");
    expect(attemptStatus({ ...base, status: null, error: "cannot connect" })).toBe("no answer");
    expect(attemptStatus({ ...base, status: null, error: null })).toBe("acknowledged");
  });
});

describe("parseHeaders", () => {
  it("reads K=V lines and names the first bad one", () => {
    expect(parseHeaders("a=1\n\n b = two=2 ")).toEqual({ a: "1", b: "two=2" });
    expect(parseHeaders("a=1\nnope")).toEqual({ bad: "nope" });
  });
});

describe("ConsumerPage", () => {
  it("opens from the list, shows loading, then the charts and recent deliveries with status and duration", async () => {
    const user = userEvent.setup();
    answer("listConsumers", async () => [hook()]);
    render(<ConsumersPanel profileId="p1" profileName="Shop" />);
    await user.click(await screen.findByTestId("consumer-orders-hook-open"));
    expect(await screen.findByTestId("consumer-page-loading")).toBeTruthy();
    answer("consumerActivity", async () => activity());
    // The next read (every 2 s) brings the activity; the page also reads once on open.
    await waitFor(() => expect(screen.getByTestId("consumer-page-name").textContent).toBe("orders-hook"), {
      timeout: 4000,
    });
    await waitFor(() => expect(screen.getByTestId("consumer-page-attempts")).toBeTruthy(), { timeout: 4000 });
    expect(callsOf("consumerActivity")[0]).toEqual(["p1", "orders-hook"]);
    expect(document.activeElement).toBe(screen.getByTestId("consumer-page-name"));
    const first = screen.getByTestId("consumer-attempt-0");
    expect(first.dataset.status).toBe("204");
    expect(first.textContent).toContain("12 ms");
    expect(screen.getByTestId("consumer-page-delivered").textContent).toBe("2");
    const second = screen.getByTestId("consumer-attempt-1");
    expect(second.dataset.ok).toBe("false");
    expect(second.textContent).toContain("HTTP 500");
    const throughput = screen.getByTestId("consumer-chart-throughput");
    const y = JSON.parse(throughput.dataset.y!) as number[];
    expect(y.length).toBe(300);
    expect(y[298]).toBe(2);
    const latency = JSON.parse(screen.getByTestId("consumer-chart-latency").dataset.y!) as (number | null)[];
    expect(latency[298]).toBe(1500);
    expect(latency[0]).toBeNull();
    expect(screen.getByTestId("consumer-page-parked-empty").textContent).toContain("after 3 retries");

    await user.click(screen.getByTestId("consumer-page-back"));
    expect(await screen.findByTestId("consumers-list")).toBeTruthy();
  }, 10000);

  it("says when there are no requests yet, and shows a read error by its kind", async () => {
    answer("listConsumers", async () => [hook()]);
    answer("consumerActivity", async () => activity({ attempts: [], samples: [] }));
    const { unmount } = render(<ConsumerPage profileId="p1" name="orders-hook" onBack={() => {}} />);
    expect((await screen.findByTestId("consumer-page-attempts-empty")).textContent).toContain("No requests yet");
    unmount();

    resetBackend();
    answer("listConsumers", async () => Promise.reject({ kind: "Locked", message: "the store key is missing" }));
    answer("consumerActivity", async () => activity());
    render(<ConsumerPage profileId="p1" name="orders-hook" onBack={() => {}} />);
    expect((await screen.findByTestId("consumer-page-error-kind")).textContent).toBe("Locked");
  });

  it("pauses and resumes, sends a test message and shows its answer, reveals the secret with how to verify", async () => {
    const user = userEvent.setup();
    let paused = false;
    answer("listConsumers", async () => [hook({ paused })]);
    answer("consumerActivity", async () => activity());
    answer("setConsumerPaused", async (_id, _name, pause) => {
      paused = pause;
      return hook({ paused });
    });
    answer("testConsumer", async () =>
      Promise.resolve({
        atMs: NOW,
        messages: 0,
        status: null,
        error: "http://127.0.0.1:9000/hook: cannot connect: Connection refused",
        durationMs: 3,
        test: true,
        webhookId: "msg_test_1",
        body: "{}",
      }),
    );
    answer("revealSigningSecret", async () => "whsec_c2VjcmV0");
    render(<ConsumerPage profileId="p1" name="orders-hook" onBack={() => {}} />);
    expect((await screen.findByTestId("consumer-page-state")).textContent).toBe("Delivering");
    await user.click(screen.getByTestId("consumer-page-pause"));
    await waitFor(() => expect(screen.getByTestId("consumer-page-state").textContent).toBe("Paused"));
    expect(callsOf("setConsumerPaused")).toEqual([["p1", "orders-hook", true]]);
    expect(screen.getByTestId("consumer-page-paused").textContent).toContain("not held");
    expect(screen.getByTestId("consumer-page-pause").textContent).toBe("Resume");
    await user.click(screen.getByTestId("consumer-page-pause"));
    await waitFor(() => expect(screen.getByTestId("consumer-page-state").textContent).toBe("Delivering"));
    expect(callsOf("setConsumerPaused")[1]).toEqual(["p1", "orders-hook", false]);

    await user.click(screen.getByTestId("consumer-page-test"));
    const result = await screen.findByTestId("consumer-page-test-result");
    expect(result.dataset.ok).toBe("false");
    expect(result.textContent).toContain("no answer");
    expect(screen.getByTestId("consumer-page-test-error").textContent).toContain("Connection refused");

    expect(callsOf("revealSigningSecret")).toEqual([]);
    await user.click(screen.getByTestId("consumer-page-reveal"));
    expect((await screen.findByTestId("consumer-page-secret")).textContent).toBe("whsec_c2VjcmV0");
    expect(screen.getByTestId("consumer-page-verify").textContent).toContain("webhook-signature");
    await user.click(screen.getByTestId("consumer-page-hide"));
    expect(screen.queryByTestId("consumer-page-secret")).toBeNull();
  });

  it("shows failing messages with their last error and the request that failed; retries or skips one", async () => {
    const user = userEvent.setup();
    answer("listConsumers", async () => [
      hook({
        failed: 1,
        parked: [{ seq: 41, ackId: "a", attempts: 4, lastError: "HTTP 500 from the endpoint", message: { record: { id: 7 } } }],
      }),
    ]);
    answer("consumerActivity", async () => activity());
    answer("retryConsumer", async () => 1);
    answer("skipConsumer", async () => 1);
    render(<ConsumerPage profileId="p1" name="orders-hook" onBack={() => {}} />);
    expect((await screen.findByTestId("consumer-parked-41-error")).textContent).toBe("HTTP 500 from the endpoint");
    const request = screen.getByTestId("consumer-parked-41-request").textContent!;
    expect(request).toContain("POST http://127.0.0.1:9000/hook");
    expect(request).toContain('"data"');
    expect(request).toContain('"id": 7');
    await user.click(screen.getByTestId("consumer-parked-41-retry"));
    await waitFor(() => expect(callsOf("retryConsumer")).toEqual([["p1", "orders-hook", 41]]));
    expect((await screen.findByTestId("consumer-page-done")).textContent).toBe("1 queued again");
    await user.click(screen.getByTestId("consumer-parked-41-skip"));
    await waitFor(() => expect(callsOf("skipConsumer")).toEqual([["p1", "orders-hook", 41]]));
  });

  it("edits the URL, headers, batch, retries and filter, refusing a bad header line; deletes after a confirmation", async () => {
    const user = userEvent.setup();
    const back = vi.fn();
    answer("listConsumers", async () => [hook()]);
    answer("consumerActivity", async () => activity());
    answer("editConsumer", async () => hook());
    answer("removeConsumer", async () => hook());
    render(<ConsumerPage profileId="p1" name="orders-hook" onBack={back} />);
    await user.click(await screen.findByTestId("consumer-page-edit"));
    const form = screen.getByTestId("consumer-edit");
    expect(within(form).getByTestId("consumer-edit-secret-headers").textContent).toContain("x-api-key");
    const url = within(form).getByTestId("consumer-edit-url");
    await user.clear(url);
    await user.type(url, "http://127.0.0.1:9001/new");
    const headers = within(form).getByTestId("consumer-edit-headers");
    await user.clear(headers);
    await user.type(headers, "x-team=ops{Enter}broken");
    await user.click(within(form).getByTestId("consumer-edit-save"));
    expect(screen.getByTestId("consumer-edit-problem").textContent).toContain('"broken"');
    expect(callsOf("editConsumer")).toEqual([]);
    await user.clear(headers);
    await user.type(headers, "x-team=ops");
    await user.clear(within(form).getByTestId("consumer-edit-batch"));
    await user.clear(within(form).getByTestId("consumer-edit-retries"));
    const filter = within(form).getByTestId("consumer-edit-filter");
    await user.clear(filter);
    await user.type(filter, "record.total > 5");
    await user.click(within(form).getByTestId("consumer-edit-save"));
    await waitFor(() => expect(callsOf("editConsumer").length).toBe(1));
    const [id, name, spec] = callsOf("editConsumer")[0];
    expect([id, name]).toEqual(["p1", "orders-hook"]);
    expect(spec.filter).toBe("record.total > 5");
    expect(spec.destination).toEqual({
      type: "webhook",
      url: "http://127.0.0.1:9001/new",
      headers: { "x-team": "ops" },
      secretHeaders: ["x-api-key"],
      batchSize: null,
      timeoutMs: 30000,
      maxRetries: null,
      maxInFlight: 10,
    });
    expect(spec).not.toHaveProperty("pending");
    expect(spec).not.toHaveProperty("paused");
    await waitFor(() => expect(screen.queryByTestId("consumer-edit")).toBeNull());

    await user.click(screen.getByTestId("consumer-page-delete"));
    expect(callsOf("removeConsumer")).toEqual([]);
    await user.click(screen.getByTestId("consumer-page-delete-confirm"));
    await waitFor(() => expect(callsOf("removeConsumer")).toEqual([["p1", "orders-hook"]]));
    await waitFor(() => expect(back).toHaveBeenCalled());
  });
});
