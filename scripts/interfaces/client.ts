// What a React team writes against the generated types (api.d.ts from openapi-typescript):
// typed calls through openapi-fetch. Compiled with `tsc --strict --noEmit` by
// scripts/check-interfaces.sh; the @ts-expect-error lines must stay errors, so a type that
// loosens (a status that became `string`, a path that vanished) fails the check.
import createClient from "openapi-fetch";
import type { components, paths } from "./api";

type Approval = components["schemas"]["Approval"];
type Problem = components["schemas"]["Problem"];

const api = createClient<paths>({ baseUrl: "http://localhost:8000" });
const headers = { Authorization: "Bearer <token>" };

export async function pendingApprovals(workflowId: string): Promise<Approval[]> {
  const { data, error, response } = await api.GET("/approvals", {
    params: { query: { status: "PENDING", workflowId, limit: 50 } },
    headers,
  });
  if (error) {
    const problem: Problem = error;
    throw new Error(`${problem.title}: ${problem.detail}`);
  }
  // The next page, if any, is in the Link header.
  void response.headers.get("Link");
  return data;
}

export async function approve(id: string, expectedVersion: number): Promise<string> {
  const { data, error } = await api.PATCH("/approvals/{id}", {
    params: { path: { id }, header: { "Idempotency-Key": `approve-${id}`, Prefer: "wait=5" } },
    body: { status: "APPROVED", reason: "Within budget", expectedVersion },
    headers,
  });
  if (error) throw new Error(error.detail);
  // 200 (applied, with Prefer: wait) is the approval; 202 is the acceptance.
  return "eventId" in data ? data.statusUrl : data.status;
}

export async function requestApproval(workflowId: string): Promise<void> {
  await api.POST("/approvals", {
    body: { workflowId, title: "New laptop", amount: 1899, currency: "EUR" },
    headers,
  });
  await api.PATCH("/approvals/{id}", {
    params: { path: { id: "x" } },
    // @ts-expect-error a decision is APPROVED or REJECTED
    body: { status: "MAYBE" },
    headers,
  });
  // @ts-expect-error there is no such path
  await api.GET("/approval", { headers });
}

// A rule body is typed as the worker reads it (RuleDefinition): each action by its `type`.
export async function smallPurchasesAreApproved(): Promise<void> {
  await api.POST("/api/v1/rules", {
    body: {
      name: "Small purchases are approved",
      on: "approval.requested",
      when: "event.data.amount < 100.0",
      then: [{ type: "approval.decide", status: "APPROVED", reason: "under 100" }],
      priority: 10,
    },
    headers,
  });
  await api.POST("/api/v1/rules", {
    body: {
      name: "x",
      on: "approval.requested",
      when: "true",
      // @ts-expect-error an approval is decided APPROVED or REJECTED, nothing else
      then: [{ type: "approval.decide", status: "MAYBE" }],
    },
    headers,
  });
}
