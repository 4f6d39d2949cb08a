import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import type { ConsumerSpec, ConsumerView, TrialRequest } from "../lib/types";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";
import { curlExample, filterPosition } from "./ConsumerForm";
import { ConsumersPanel } from "./ConsumersPanel";

vi.mock("../lib/backend", async () =>
  (await import("../test/fakeBackend")).commands([
    "listConsumers",
    "addConsumer",
    "removeConsumer",
    "revealSigningSecret",
    "revealPullToken",
    "retryConsumer",
    "skipConsumer",
    "checkConsumerFilter",
    "collections",
    "tryWebhook",
    "trialWebhookRequests",
  ]),
);
// A consumer's page charts with uPlot, which needs a canvas jsdom lacks.
vi.mock("./Chart", () => ({ Chart: ({ testId }: { testId: string }) => <div data-testid={testId} /> }));

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
    headers: {},
    secretHeaders: ["x-api-key"],
    batchSize: 1,
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

beforeEach(() => {
  resetBackend();
});

describe("ConsumersPanel", () => {
  it("says when there are no consumers, and shows a list error by its kind", async () => {
    answer("listConsumers", async () => []);
    const { unmount } = render(<ConsumersPanel profileId="p1" profileName="Shop" />);
    expect(screen.getByTestId("consumers-loading")).toBeTruthy();
    expect((await screen.findByTestId("consumers-empty")).textContent).toContain("No consumers yet");
    unmount();

    resetBackend();
    answer("listConsumers", async () => Promise.reject({ kind: "Locked", message: "the store key is missing" }));
    render(<ConsumersPanel profileId="p1" profileName="Shop" />);
    expect((await screen.findByTestId("consumers-error-kind")).textContent).toBe("Locked");
  });

  it("lists each consumer with its destination, counts and notices", async () => {
    answer("listConsumers", async () => [
      hook({
        failed: 2,
        notices: [{ kind: "Behind", message: "consumer 'orders-hook' missed 10 changes", atMs: 1 }],
      }),
      hook({
        id: "c2",
        name: "app-pull",
        mode: "rows",
        filter: null,
        pending: 0,
        destination: { type: "pull", visibilityTimeoutMs: 30000, maxAckPending: 10000, maxWaiting: 20 },
      }),
    ]);
    render(<ConsumersPanel profileId="p1" profileName="Shop" />);
    await screen.findByTestId("consumers-list");
    expect(screen.getByTestId("consumer-orders-hook-destination").textContent).toBe("http://127.0.0.1:9000/hook");
    expect(screen.getByTestId("consumer-orders-hook-pending").textContent).toBe("4");
    expect(screen.getByTestId("consumer-orders-hook-failed").textContent).toBe("2");
    expect(screen.getByTestId("consumer-orders-hook-notices").textContent).toContain("missed 10 changes");
    expect(screen.getByTestId("consumer-app-pull-mode").textContent).toBe("rows");
    expect(screen.getByTestId("consumer-app-pull-destination").textContent).toBe(
      "http://127.0.0.1:7376/api/http_pull_consumers/app-pull/receive",
    );
    expect(screen.queryByTestId("consumer-app-pull-reveal")).toBeNull();
  });

  it("reveals the signing secret only when asked, and deletes only after a confirmation", async () => {
    const user = userEvent.setup();
    answer("listConsumers", async () => [hook()]);
    answer("revealSigningSecret", async () => "whsec_c2VjcmV0");
    answer("removeConsumer", async () => hook());
    render(<ConsumersPanel profileId="p1" profileName="Shop" />);
    await screen.findByTestId("consumer-orders-hook");
    expect(callsOf("revealSigningSecret")).toEqual([]);
    await user.click(screen.getByTestId("consumer-orders-hook-reveal"));
    expect((await screen.findByTestId("consumer-orders-hook-secret")).textContent).toBe("whsec_c2VjcmV0");
    expect(callsOf("revealSigningSecret")).toEqual([["p1", "orders-hook"]]);
    await user.click(screen.getByTestId("consumer-orders-hook-hide"));
    expect(screen.queryByTestId("consumer-orders-hook-secret")).toBeNull();

    await user.click(screen.getByTestId("consumer-orders-hook-delete"));
    expect(callsOf("removeConsumer")).toEqual([]);
    await user.click(screen.getByTestId("consumer-orders-hook-delete-cancel"));
    await user.click(screen.getByTestId("consumer-orders-hook-delete"));
    await user.click(screen.getByTestId("consumer-orders-hook-delete-confirm"));
    await waitFor(() => expect(callsOf("removeConsumer")).toEqual([["p1", "orders-hook"]]));
  });

  it("reveals a pull consumer's token only when asked, with the curl example filled in and why the API does not answer", async () => {
    const user = userEvent.setup();
    const pull = hook({
      id: "c2",
      name: "app-pull",
      destination: { type: "pull", visibilityTimeoutMs: 30000, maxAckPending: 10000, maxWaiting: 20 },
    });
    answer("listConsumers", async () => [pull]);
    answer("revealPullToken", async () => ({
      token: "tp_0123abcd",
      baseUrl: "http://127.0.0.1:7400",
      serving: true,
      problem: null,
    }));
    render(<ConsumersPanel profileId="p1" profileName="Shop" />);
    await screen.findByTestId("consumer-app-pull");
    expect(screen.queryByTestId("consumer-app-pull-token")).toBeNull();
    expect(screen.queryByTestId("consumer-app-pull-reveal")).toBeNull();
    expect(callsOf("revealPullToken")).toEqual([]);
    await user.click(screen.getByTestId("consumer-app-pull-reveal-token"));
    expect((await screen.findByTestId("consumer-app-pull-token")).textContent).toBe("tp_0123abcd");
    expect(callsOf("revealPullToken")).toEqual([["p1"]]);
    expect(screen.getByTestId("consumer-app-pull-curl").textContent).toBe(
      'curl -s -H "Authorization: Bearer tp_0123abcd" "http://127.0.0.1:7400/api/http_pull_consumers/app-pull/receive?batch_size=10&wait_for=5000"',
    );
    expect(screen.getByTestId("consumer-app-pull-destination").textContent).toBe(
      "http://127.0.0.1:7400/api/http_pull_consumers/app-pull/receive",
    );
    expect(screen.queryByTestId("consumer-app-pull-pull-problem")).toBeNull();
    await user.click(screen.getByTestId("consumer-app-pull-hide-token"));
    expect(screen.queryByTestId("consumer-app-pull-token")).toBeNull();
    expect(screen.queryByTestId("consumer-app-pull-curl")).toBeNull();

    // The port taken by another server: the token still, and what to do.
    answer("revealPullToken", async () => ({
      token: "tp_0123abcd",
      baseUrl: "http://127.0.0.1:7376",
      serving: false,
      problem: "pull API: cannot listen on 127.0.0.1:7376: Address in use. Another Tidepool app or a `tidepool capture --listen` probably serves it",
    }));
    await user.click(screen.getByTestId("consumer-app-pull-reveal-token"));
    expect((await screen.findByTestId("consumer-app-pull-pull-problem")).textContent).toContain("tidepool capture --listen");
    expect(screen.getByTestId("consumer-app-pull-token").textContent).toBe("tp_0123abcd");

    // A keychain that refuses is shown by its kind.
    await user.click(screen.getByTestId("consumer-app-pull-hide-token"));
    answer("revealPullToken", async () => Promise.reject({ kind: "Keychain", message: "the keychain is locked" }));
    await user.click(screen.getByTestId("consumer-app-pull-reveal-token"));
    expect((await screen.findByTestId("consumer-app-pull-error-kind")).textContent).toBe("Keychain");
    expect(screen.queryByTestId("consumer-app-pull-token")).toBeNull();
  });

  it("retries or skips parked messages", async () => {
    const user = userEvent.setup();
    answer("listConsumers", async () => [
      hook({
        failed: 25,
        parked: [{ seq: 41, ackId: "a", attempts: 4, lastError: "HTTP 500 from the endpoint", message: {} }],
      }),
    ]);
    answer("retryConsumer", async () => 1);
    answer("skipConsumer", async () => 1);
    render(<ConsumersPanel profileId="p1" profileName="Shop" />);
    expect((await screen.findByTestId("consumer-orders-hook-parked-41")).textContent).toContain("HTTP 500 from the endpoint");
    expect(screen.getByTestId("consumer-orders-hook-parked-more").textContent).toBe(
      "The oldest 1 of 25; Retry and Skip act on all of them.",
    );
    await user.click(screen.getByTestId("consumer-orders-hook-retry"));
    expect((await screen.findByTestId("consumer-orders-hook-done")).textContent).toBe("1 queued again");
    await user.click(screen.getByTestId("consumer-orders-hook-skip"));
    await waitFor(() => expect(screen.getByTestId("consumer-orders-hook-done").textContent).toBe("1 skipped"));
    expect(callsOf("retryConsumer")).toEqual([["p1", "orders-hook"]]);
    expect(callsOf("skipConsumer")).toEqual([["p1", "orders-hook"]]);
  });
});

describe("Create consumer", () => {
  async function openForm() {
    const user = userEvent.setup();
    answer("listConsumers", async () => []);
    answer("collections", async () => [
      { name: "public/orders", rows: 2, changes: 2, lastChangeMs: null },
      { name: "public/users", rows: 1, changes: 1, lastChangeMs: null },
    ]);
    render(<ConsumersPanel profileId="p1" profileName="Shop" />);
    await screen.findByTestId("consumers-empty");
    await user.click(screen.getByTestId("consumer-new"));
    await screen.findByTestId("consumer-collection-public/orders");
    return user;
  }

  it("sends a push consumer with its headers, and secret header values apart from the definition", async () => {
    const user = await openForm();
    answer("addConsumer", async () => hook());
    await user.type(screen.getByTestId("consumer-name"), "orders-hook");
    await user.click(screen.getByTestId("consumer-collection-public/orders"));
    await user.click(screen.getByTestId("consumer-action-read"));
    await user.click(screen.getByTestId("consumer-mode-rows"));
    await user.click(screen.getByTestId("consumer-start-beginning"));
    await user.type(screen.getByTestId("consumer-url"), "http://127.0.0.1:9000/hook");
    await user.type(screen.getByTestId("consumer-headers"), "x-team=shop");
    await user.click(screen.getByTestId("consumer-add-secret-header"));
    await user.type(screen.getByTestId("consumer-secret-name-0"), "x-api-key");
    const value = screen.getByTestId("consumer-secret-value-0") as HTMLInputElement;
    expect(value.type).toBe("password");
    await user.type(value, "k-123");
    await user.clear(screen.getByTestId("consumer-batch-size"));
    await user.type(screen.getByTestId("consumer-batch-size"), "50");
    await user.type(screen.getByTestId("consumer-max-retries"), "5");
    await user.click(screen.getByTestId("consumer-create"));
    await waitFor(() => expect(callsOf("addConsumer").length).toBe(1));
    const [id, spec, secrets] = callsOf("addConsumer")[0] as [string, ConsumerSpec, unknown];
    expect(id).toBe("p1");
    expect(spec).toEqual({
      name: "orders-hook",
      collections: ["public/orders"],
      actions: ["insert", "update", "delete"],
      filter: null,
      mode: "rows",
      start: "beginning",
      groupBy: [],
      destination: {
        type: "webhook",
        url: "http://127.0.0.1:9000/hook",
        headers: { "x-team": "shop" },
        secretHeaders: ["x-api-key"],
        batchSize: 50,
        timeoutMs: 30000,
        maxRetries: 5,
        maxInFlight: 10,
      },
    });
    expect(JSON.stringify(spec)).not.toContain("k-123");
    expect(secrets).toEqual([{ name: "x-api-key", value: "k-123" }]);
    // The form closes; the list is read again.
    await waitFor(() => expect(screen.queryByTestId("consumer-form")).toBeNull());
  });

  it("shows a refused filter at its position on Check and when saving fails", async () => {
    const user = await openForm();
    answer("checkConsumerFilter", async () => ({
      problem: { message: "filter: line 1, column 17: unexpected end of input", line: 1, column: 17 },
      preview: [],
    }));
    await user.click(screen.getByTestId("consumer-collection-public/orders"));
    await user.type(screen.getByTestId("consumer-filter"), "record.total > ");
    await user.click(screen.getByTestId("consumer-filter-check"));
    expect((await screen.findByTestId("consumer-filter-position")).textContent).toContain("Line 1, column 17");
    expect(screen.getByTestId("consumer-filter").getAttribute("aria-invalid")).toBe("true");
    expect(callsOf("checkConsumerFilter")[0]).toEqual([
      "p1",
      "record.total > ",
      ["public/orders"],
      ["insert", "update", "delete", "read"],
    ]);

    // A valid one says how many recent changes it keeps.
    answer("checkConsumerFilter", async () => ({
      problem: null,
      preview: [{ collection: "public/orders", tried: 20, kept: 3 }],
    }));
    await user.type(screen.getByTestId("consumer-filter"), "100");
    expect(screen.queryByTestId("consumer-filter-problem")).toBeNull();
    await user.click(screen.getByTestId("consumer-filter-check"));
    expect((await screen.findByTestId("consumer-filter-preview-public/orders")).textContent).toContain(
      "keeps 3 of its last 20 changes",
    );

    // Saving refused for the filter: the position is shown at the field too.
    answer("addConsumer", async () =>
      Promise.reject({ kind: "InvalidInput", message: "filter: line 2, column 3: 'x' is not known" }),
    );
    await user.type(screen.getByTestId("consumer-name"), "bad");
    await user.type(screen.getByTestId("consumer-url"), "http://127.0.0.1:9/hook");
    await user.click(screen.getByTestId("consumer-create"));
    expect((await screen.findByTestId("consumer-filter-position")).textContent).toContain("Line 2, column 3");
    expect(screen.getByTestId("consumer-form-error-kind").textContent).toBe("InvalidInput");
    expect(screen.getByTestId("consumer-form")).toBeTruthy();
  });

  it("offers pull with its URL and a curl example, and sends the visibility timeout", async () => {
    const user = await openForm();
    answer("addConsumer", async () => hook());
    await user.type(screen.getByTestId("consumer-name"), "app-pull");
    await user.click(screen.getByTestId("consumer-collection-public/users"));
    await user.click(screen.getByTestId("consumer-kind-pull"));
    expect(screen.getByTestId("consumer-pull-url").textContent).toBe(
      "http://127.0.0.1:7376/api/http_pull_consumers/app-pull/receive",
    );
    expect(screen.getByTestId("consumer-curl").textContent).toBe(curlExample("app-pull"));
    expect(screen.getByTestId("consumer-pull-note").textContent).toContain("Reveal token");
    expect(screen.getByTestId("consumer-pull-note").textContent).toContain('tidepool api-token --profile "Shop"');
    await user.clear(screen.getByTestId("consumer-visibility-timeout"));
    await user.type(screen.getByTestId("consumer-visibility-timeout"), "60000");
    await user.click(screen.getByTestId("consumer-create"));
    await waitFor(() => expect(callsOf("addConsumer").length).toBe(1));
    const [, spec, secrets] = callsOf("addConsumer")[0] as [string, ConsumerSpec, unknown];
    expect(spec.destination).toEqual({ type: "pull", visibilityTimeoutMs: 60000, maxAckPending: 10000, maxWaiting: 20 });
    expect(spec.actions).toEqual([]);
    expect(secrets).toEqual([]);
  });

  it("offers NATS JetStream and sends its subject, stream and credential apart from the definition", async () => {
    const user = await openForm();
    answer("addConsumer", async () => hook());
    await user.type(screen.getByTestId("consumer-name"), "to-nats");
    await user.click(screen.getByTestId("consumer-collection-public/orders"));
    await user.click(screen.getByTestId("consumer-kind-nats"));
    expect((screen.getByTestId("consumer-nats-subject") as HTMLInputElement).value).toBe("tidepool.{schema}.{table}.{action}");
    await user.clear(screen.getByTestId("consumer-nats-url"));
    await user.type(screen.getByTestId("consumer-nats-url"), "nats://10.0.0.5:4222");
    await user.clear(screen.getByTestId("consumer-nats-stream"));
    await user.type(screen.getByTestId("consumer-nats-stream"), "SHOP");
    await user.selectOptions(screen.getByTestId("consumer-nats-auth"), "userPassword");
    await user.type(screen.getByTestId("consumer-nats-user"), "tidepool");
    // Without the password the form says which field is missing and calls nothing.
    await user.click(screen.getByTestId("consumer-create"));
    expect((await screen.findByTestId("consumer-form-error")).textContent).toContain("nats-credential");
    expect(callsOf("addConsumer")).toEqual([]);
    const password = screen.getByTestId("consumer-nats-credential") as HTMLInputElement;
    expect(password.type).toBe("password");
    await user.type(password, "pw-123");
    await user.click(screen.getByTestId("consumer-create"));
    await waitFor(() => expect(callsOf("addConsumer").length).toBe(1));
    const [, spec, secrets, credential] = callsOf("addConsumer")[0] as [string, ConsumerSpec, unknown, string];
    expect(spec.destination).toEqual({
      type: "nats",
      url: "nats://10.0.0.5:4222",
      subject: "tidepool.{schema}.{table}.{action}",
      stream: "SHOP",
      auth: { kind: "userPassword", user: "tidepool" },
      tls: false,
      caFile: null,
      timeoutMs: 5000,
      batchSize: 100,
      maxRetries: null,
    });
    expect(JSON.stringify(spec)).not.toContain("pw-123");
    expect(secrets).toEqual([]);
    expect(credential).toBe("pw-123");
  });

  it("checks the filter as it is typed, showing only the latest expression's preview", async () => {
    const user = await openForm();
    answer("checkConsumerFilter", async (_id, text) => {
      return text.endsWith(">")
        ? { problem: { message: "filter: line 1, column 14: unexpected end of input", line: 1, column: 14 }, preview: [] }
        : { problem: null, preview: [{ collection: "public/orders", tried: 20, kept: 7 }] };
    });
    await user.click(screen.getByTestId("consumer-collection-public/orders"));
    await user.type(screen.getByTestId("consumer-filter"), "record.total >");
    // No click on Check: the refusal arrives on its own, at its position.
    expect((await screen.findByTestId("consumer-filter-position", {}, { timeout: 5000 })).textContent).toContain(
      "Line 1, column 14",
    );
    await user.type(screen.getByTestId("consumer-filter"), " 100");
    expect(
      (await screen.findByTestId("consumer-filter-preview-public/orders", {}, { timeout: 5000 })).textContent,
    ).toContain("keeps 7 of its last 20 changes");
    expect(screen.queryByTestId("consumer-filter-problem")).toBeNull();
    const texts = callsOf("checkConsumerFilter").map((c) => c[1]);
    expect(texts[texts.length - 1]).toBe("record.total > 100");
    // Debounced: far fewer checks than keys typed.
    expect(texts.length).toBeLessThan(5);
  });

  it("refuses a header line that is not K=V before calling the engine, naming the field", async () => {
    const user = await openForm();
    await user.type(screen.getByTestId("consumer-name"), "x");
    await user.type(screen.getByTestId("consumer-url"), "http://127.0.0.1:9/hook");
    await user.type(screen.getByTestId("consumer-headers"), "no-equals-sign");
    await user.click(screen.getByTestId("consumer-create"));
    const error = await screen.findByTestId("consumer-form-error");
    expect(within(error).getByTestId("consumer-form-error-message").textContent).toBe(
      "header: 'no-equals-sign' is not K=V",
    );
    expect(callsOf("addConsumer")).toEqual([]);
  });

  it("tells an empty store apart: no collections until the capture ran", async () => {
    const user = userEvent.setup();
    answer("listConsumers", async () => []);
    answer("collections", async () => []);
    render(<ConsumersPanel profileId="p1" profileName="Shop" />);
    await user.click(await screen.findByTestId("consumer-new"));
    expect((await screen.findByTestId("consumer-no-collections")).textContent).toContain("start the capture first");
  });
});

describe("filterPosition", () => {
  it("reads the engine's line and column", () => {
    expect(filterPosition("filter: line 3, column 12: bad")).toEqual({ line: 3, column: 12 });
    expect(filterPosition("filter: the expression is empty")).toBeNull();
  });

  it("tries a webhook: starts the app's receiver and shows what arrives, with its signature checked", async () => {
    const user = userEvent.setup();
    answer("listConsumers", async () => []);
    answer("tryWebhook", async () => ({ url: "http://127.0.0.1:41234/hook", consumer: hook({ name: "try-webhook" }) }));
    let arrived: TrialRequest[] = [];
    answer("trialWebhookRequests", async () => arrived);
    render(<ConsumersPanel profileId="p1" profileName="Shop" />);
    await screen.findByTestId("consumers-empty");
    await user.click(screen.getByTestId("consumer-try-webhook"));
    expect(callsOf("tryWebhook")).toEqual([["p1"]]);
    expect((await screen.findByTestId("trial-webhook-url")).textContent).toBe("http://127.0.0.1:41234/hook");
    expect((await screen.findByTestId("trial-webhook-empty")).textContent).toContain("Nothing has arrived yet");
    arrived = [
      {
        atMs: 1,
        webhookId: "msg_1",
        verified: true,
        messages: 2,
        summary: ["insert shop.orders", "update shop.orders"],
        body: "{}",
      },
      { atMs: 0, webhookId: "msg_x", verified: false, messages: 1, summary: ["insert"], body: "{}" },
    ];
    expect((await screen.findByTestId("trial-request-0-summary", {}, { timeout: 3000 })).textContent).toBe(
      "insert shop.orders, update shop.orders",
    );
    expect(screen.getByTestId("trial-request-0-verified").dataset.verified).toBe("true");
    expect(screen.getByTestId("trial-request-1-verified").textContent).toBe("signature does not verify");
    await user.click(screen.getByTestId("trial-webhook-close"));
    expect(screen.queryByTestId("trial-webhook")).toBeNull();
  });

  it("says why a webhook cannot be tried yet", async () => {
    const user = userEvent.setup();
    answer("listConsumers", async () => []);
    answer("tryWebhook", async () =>
      Promise.reject({ kind: "NotFound", message: "no collections yet: start the capture first, then try a webhook" }),
    );
    render(<ConsumersPanel profileId="p1" profileName="Shop" />);
    await screen.findByTestId("consumers-empty");
    await user.click(screen.getByTestId("consumer-try-webhook"));
    expect((await screen.findByTestId("trial-webhook-start-error-kind")).textContent).toBe("NotFound");
  });
});
