// What a round of the sample app looks like on the page.
//
// The app (examples/apps/app) polls the sensor, asks the worker to square the
// reading and serves the last result as {"value": 7, "square": 49, "at": "..."}.

export const SAMPLE = { value: 7, square: 49, at: "2026-01-01T00:00:00Z" };

export function checkRound(data) {
  if (!data || typeof data.value !== "number" || typeof data.square !== "number") {
    throw new Error("not a round of the app: expected {value, square, at}");
  }
  if (data.square !== data.value * data.value) {
    throw new Error(`the worker says ${data.value}² is ${data.square}`);
  }
  return data;
}

export function row(data, source) {
  return [new Date(data.at).toISOString(), String(data.value), String(data.square), source];
}
