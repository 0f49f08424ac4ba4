/* `npm run hash-password -- <password>` (or the password on stdin): prints a scrypt hash for users.json. */
import { hashPassword } from './auth.js';

const fromArgs = process.argv[2];
const password =
  fromArgs ??
  (await new Promise<string>((resolve) => {
    let text = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk) => {
      text += chunk;
    });
    process.stdin.on('end', () => resolve(text.replace(/\r?\n$/, '')));
  }));
if (password === '') {
  process.stderr.write(
    'usage: npm run hash-password -- <password>   (or: echo -n secret | npm run hash-password)\n',
  );
  process.exit(1);
}
process.stdout.write(`${hashPassword(password)}\n`);
