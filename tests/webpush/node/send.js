// Push with node's web-push package: `node send.js '<json>'`, where the JSON is
// {"subscription": PushSubscription JSON, "payload": text, "options": web-push options}
// or {"generate": true} for a VAPID key pair. Prints the answer as JSON.
//
// web-push encrypts (RFC 8291), signs (VAPID) and builds the request
// (generateRequestDetails); sendNotification itself only speaks https, and the
// relay under test is plain http on loopback, so the request goes out with fetch.
const webpush = require('web-push');

async function main() {
  const args = JSON.parse(process.argv[2]);
  if (args.generate) {
    console.log(JSON.stringify(webpush.generateVAPIDKeys()));
    return;
  }
  const details = webpush.generateRequestDetails(args.subscription, args.payload, args.options || {});
  const r = await fetch(details.endpoint, {
    method: details.method,
    headers: details.headers,
    body: details.body,
  });
  console.log(JSON.stringify({
    statusCode: r.status,
    headers: Object.fromEntries(r.headers.entries()),
    body: await r.text(),
  }));
}

main();
