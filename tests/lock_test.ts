/**
 * The behavioural suite against every client installable here, each on a
 * server of its own.
 */

import { allKinds, type OpenClient } from "./_clients.ts";
import { RespClient } from "./_resp.ts";
import { assertNoLocksLeft, type Context, scenarios } from "./_scenarios.ts";
import { RedisServer } from "./_server.ts";

for (const kind of allKinds) {
  Deno.test(`Lock with ${kind.name}`, async (t) => {
    await using server = await RedisServer.start();
    const raw = await RespClient.connect(server.port);
    try {
      for (const [index, scenario] of scenarios.entries()) {
        await t.step(scenario.name, async () => {
          const opened: OpenClient[] = [];
          const ctx: Context = {
            name: `scenario-${index}`,
            async client() {
              const open = await kind.open(server);
              opened.push(open);
              return open.client;
            },
            raw: (command, ...args) => raw.send(command, args.map(String)),
          };
          try {
            await scenario.fn(ctx);
            await assertNoLocksLeft(ctx);
          } finally {
            for (const open of opened) await open.close();
          }
        });
      }
    } finally {
      await raw.close();
    }
  });
}
