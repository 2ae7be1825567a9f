/**
 * The behavioural suite against every client installable here under Deno,
 * each on a server of its own. (Bun's client: bun_test.ts.)
 */

import { allKinds } from "./_clients.ts";
import { RespClient } from "./_resp.ts";
import { runs, runScenario } from "./_scenarios.ts";
import { RedisServer } from "./_server.ts";

for (const kind of allKinds) {
  Deno.test(`Lock with ${kind.name}`, async (t) => {
    await using server = await RedisServer.start();
    const raw = await RespClient.connect(server.port);
    const runner = {
      async open() {
        const { client, close } = await kind.open(server);
        return [client, close] as const;
      },
      raw: (command: string, args: string[]) => raw.send(command, args),
      polls: kind.polls,
    };
    try {
      for (const { scenario, index, name } of runs()) {
        await t.step(name, () => runScenario(scenario, index, runner));
      }
    } finally {
      await raw.close();
    }
  });
}
